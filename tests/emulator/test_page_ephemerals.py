"""The emulator page (emulator/static/app.js) shows a user only their own ephemeral messages, from the
first load on (issue 15: it showed every user's until the user selector changed).

The page runs in Node against a minimal DOM stand-in and a fake ``/_emulator/state`` that behaves as the real
one: without a ``user`` it returns every user's ephemerals. Skips without Node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

APP_JS = Path(__file__).resolve().parents[2] / "emulator" / "static" / "app.js"
NODE = shutil.which("node") or shutil.which("nodejs")

pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js is not installed (apt-get install nodejs)")

# A DOM just large enough for app.js: elements with children, text, dataset, options and listeners.
RUNNER = r"""
const fs = require("fs");
const vm = require("vm");
const [appPath, storedUser] = process.argv.slice(2);

class El {
  constructor(tag) {
    Object.assign(this, { tagName: tag, children: [], options: [], dataset: {}, className: "", attrs: {},
      listeners: {}, text: "", hidden: false, value: "", scrollHeight: 0, scrollTop: 0, clientHeight: 0 });
    this.classList = { add: (c) => { this.className += " " + c; } };
  }
  append(...nodes) {
    for (const n of nodes) { this.children.push(n); if (n.tagName === "option") this.options.push(n); }
  }
  replaceChildren(...nodes) { this.children = []; this.options = []; this.append(...nodes); }
  setAttribute(k, v) { this.attrs[k] = v; if (k === "value") this.value = v; }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  querySelector() { return null; }
  querySelectorAll() { return []; }
  scrollIntoView() {}
  set textContent(t) { this.text = t; this.children = []; }
  get textContent() { return this.text + this.children.map((c) => c.textContent).join(""); }
}

const ids = ["status", "team-name", "bot-url", "user-select", "sidebar", "channel-title", "messages",
  "overlay", "dialog", "command-form", "command-input"];
const byId = Object.fromEntries(ids.map((id) => [id, new El(id === "user-select" ? "select" : "div")]));
const document = {
  getElementById: (id) => byId[id],
  createElement: (tag) => new El(tag),
  createTextNode: (t) => ({ tagName: "#text", textContent: t }),
  querySelectorAll: (sel) => (sel === "#messages .message" ? byId.messages.children : []),
};
const users = ["U0ALICE", "U0BOB"];
function state(user) {
  const ephemerals = [
    { channel: "C0DEPLOYS", ts: "1700000001.000100", user: "U0ALICE", subtype: "ephemeral", text: "hi" },
    { channel: "C0DEPLOYS", ts: "1700000002.000100", user: "U0BOB", subtype: "ephemeral", text: "hey" },
  ].filter((e) => !user || e.user === user);  // as the real endpoint: no user, everyone's
  return {
    ok: true, version: 1, bot_url: "http://127.0.0.1:9/slack/events",
    team: { id: "T0KEYTURN", name: "Keyturn" },
    users: users.map((id) => ({ id, name: id.toLowerCase(), real_name: id, is_bot: false })),
    channels: [{ id: "C0DEPLOYS", name: "deploys", is_im: false, members: users, messages: [] }],
    ims: [], ephemerals, views: [],
  };
}
const store = { "kt-user": storedUser };
const sandbox = {
  document, console, JSON, Object, Date, Math, Promise, parseFloat, encodeURIComponent,
  localStorage: { getItem: (k) => store[k] || null, setItem: (k, v) => { store[k] = v; } },
  location: { hash: "" },
  window: { addEventListener() {} },
  setInterval() {},
  fetch: async (url) => {
    const user = new URL(url, "http://x").searchParams.get("user");
    return { json: async () => JSON.parse(JSON.stringify(state(user))) };
  },
};
vm.createContext(sandbox);
vm.runInContext(fs.readFileSync(appPath, "utf8"), sandbox);

async function settle() {  // let every pending fetch and render run (no timers are involved)
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}
const shown = () =>
  byId.messages.children.filter((n) => n.className.includes("ephemeral")).map((n) => n.dataset.ts);
(async () => {
  await settle();
  const first = shown();
  for (const fn of byId["user-select"].listeners.change) fn({ target: { value: "U0BOB" } });
  await settle();
  console.log(JSON.stringify({ first, afterSwitch: shown() }));
})();
"""


@pytest.mark.parametrize("stored", ["", "U0ALICE", "U0GONE"])
def test_only_the_selected_users_ephemerals_from_the_first_load(tmp_path: Path, stored: str) -> None:
    runner = tmp_path / "runner.js"
    runner.write_text(RUNNER)
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(runner), str(APP_JS), stored], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"first": ["1700000001.000100"], "afterSwitch": ["1700000002.000100"]}
