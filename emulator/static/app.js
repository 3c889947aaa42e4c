// Keyturn Slack emulator page. Vanilla JS, no build step. Every piece of text from the bot or the workspace
// is put in the page with textContent or createTextNode, never innerHTML.
"use strict";

const ui = {
  user: localStorage.getItem("kt-user") || "",
  channel: localStorage.getItem("kt-channel") || "",
  state: null,
  stateUser: null, // the user the state was fetched for: ephemerals and views are that user's only
  version: -1,
  dialogViewId: null,
  confirmOpen: false,
  target: null, // {channel, ts} from a permalink (#C…/<ts>), until the message has been shown
  highlightTs: null,
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function status(text) {
  document.getElementById("status").textContent = text;
}

async function postJSON(path, body) {
  const resp = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch (e) { data = { ok: false, error: "bad_response" }; }
  return { httpStatus: resp.status, data };
}

function describeDelivery(what, result) {
  const d = result.data;
  if (result.httpStatus >= 400 && !d.request) return `${what}: ${d.error}${d.message ? " — " + d.message : ""}`;
  if (!d.ok) return `${what}: ${d.error} (the bot did not answer)`;
  return `${what}: the bot answered HTTP ${d.response.status}`;
}

// ---- text: plain_text and mrkdwn, rendered as Slack's client shows them ---------------------------------
// Stored text is what Slack echoes (docs/emulator.md, "How the emulator echoes blocks"): plain_text is
// entity-escaped, mrkdwn keeps its control sequences. Everything below builds DOM nodes from text nodes only.
// Unicode format characters (U+200B, U+00AD, U+2060 …) are neither stripped nor shown: the browser renders
// them invisibly, as Slack's client does.

const ENTITIES = { "&lt;": "<", "&gt;": ">", "&amp;": "&" };
function unescapeSlack(text) {
  return text.replace(/&(lt|gt|amp);/g, (m) => ENTITIES[m]);
}

// Common emoji codes; an unknown :code: stays as text, as Slack shows a code it does not know.
const EMOJI = {
  "+1": "👍", "-1": "👎", "100": "💯", alarm_clock: "⏰", arrow_down: "⬇️", arrow_left: "⬅️",
  arrow_right: "➡️", arrow_up: "⬆️", bangbang: "‼️", bell: "🔔", bomb: "💣", boom: "💥", bug: "🐛",
  bulb: "💡", calendar: "📆", clap: "👏", clipboard: "📋", clock1: "🕐", closed_lock_with_key: "🔐",
  construction: "🚧", cry: "😢", date: "📅", dart: "🎯", eyes: "👀", fire: "🔥", gear: "⚙️", ghost: "👻",
  green_circle: "🟢", grinning: "😀", hammer: "🔨", heart: "❤️", heavy_check_mark: "✔️",
  heavy_minus_sign: "➖", heavy_multiplication_x: "✖️", heavy_plus_sign: "➕", hourglass: "⌛",
  hourglass_flowing_sand: "⏳", information_source: "ℹ️", key: "🔑", large_blue_circle: "🔵",
  large_green_circle: "🟢", large_yellow_circle: "🟡", link: "🔗", lock: "🔒", mag: "🔍", memo: "📝",
  no_bell: "🔕", no_entry: "⛔", no_entry_sign: "🚫", octagonal_sign: "🛑", ok: "🆗", ok_hand: "👌",
  one: "1️⃣", two: "2️⃣", three: "3️⃣", four: "4️⃣", five: "5️⃣", package: "📦", pencil: "📝",
  pencil2: "✏️", point_right: "👉", pray: "🙏", question: "❓", exclamation: "❗", raised_hands: "🙌",
  red_circle: "🔴", robot_face: "🤖", rocket: "🚀", rotating_light: "🚨", shield: "🛡️", ship: "🚢",
  slightly_smiling_face: "🙂", smile: "😄", sparkles: "✨", star: "⭐", stop_sign: "🛑", stopwatch: "⏱️",
  tada: "🎉", thumbsdown: "👎", thumbsup: "👍", timer_clock: "⏲️", unlock: "🔓", warning: "⚠️",
  wave: "👋", white_check_mark: "✅", x: "❌", zap: "⚡",
};
const EMOJI_CODE = /:([a-z0-9_+'-]+):/g;

function emojify(text) {
  return text.replace(EMOJI_CODE, (m, name) => (Object.hasOwn(EMOJI, name) ? EMOJI[name] : m));
}

function userName(id) {
  const u = ui.state && ui.state.users.find((x) => x.id === id);
  return u ? u.name : null;
}

function appendLines(parent, text) {
  // Newlines are line breaks, as in Slack; other whitespace is kept (CSS white-space: pre-wrap).
  text.split("\n").forEach((line, i) => {
    if (i > 0) parent.append(el("br"));
    if (line) parent.append(document.createTextNode(line));
  });
}

// plain_text: entities decoded, :codes: as emoji when `emoji` is true (missing counts as true, as Slack).
function plainString(obj) {
  if (!obj || typeof obj.text !== "string") return "";
  const text = unescapeSlack(obj.text);
  return obj.emoji === false ? text : emojify(text);
}

function renderPlain(obj) {
  const out = el("span", { class: "plain" });
  appendLines(out, plainString(obj));
  return out;
}

// ---- mrkdwn ----

function controlTarget(inner) {
  const bar = inner.indexOf("|");
  return bar < 0 ? [inner, ""] : [inner.slice(0, bar), inner.slice(bar + 1)];
}

// Slack's <…> control sequences. Returns a node (chip or link), or text for what Slack shows as text.
function renderControl(inner, plainOnly) {
  const [target, rawLabel] = controlTarget(inner);
  const label = unescapeSlack(rawLabel);
  const st = ui.state || { users: [], channels: [], groups: [] };
  const chip = (text) => (plainOnly ? document.createTextNode(text) : el("span", { class: "mention" }, text));
  if (target.startsWith("@")) { // Slack shows the user's current name, whatever label was sent
    return chip("@" + (userName(target.slice(1)) || label || target.slice(1)));
  }
  if (target.startsWith("#")) {
    const channel = st.channels.find((c) => c.id === target.slice(1));
    return chip("#" + (channel ? channel.name : label || target.slice(1)));
  }
  if (target.startsWith("!subteam^")) {
    const group = (st.groups || []).find((g) => g.id === target.slice("!subteam^".length));
    return chip(group ? "@" + group.handle : label || "@group");
  }
  if (target.startsWith("!date^")) return document.createTextNode(label || target); // the fallback text
  if (target.startsWith("!")) {
    const name = target.slice(1).split("^")[0];
    if (["here", "channel", "everyone"].includes(name)) return chip("@" + name);
    return document.createTextNode(label || "<" + unescapeSlack(inner) + ">");
  }
  const url = unescapeSlack(target);
  const shown = label || url;
  if (!plainOnly && /^(https?:\/\/|mailto:)/i.test(url)) {
    return el("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, shown);
  }
  return plainOnly ? document.createTextNode(shown) : el("span", { class: "link", title: url }, shown);
}

// Atoms are parts of a line that formatting never splits: code spans, control sequences and emoji codes.
// A line becomes an array of single characters and atom objects; the formatting parser walks that array.
const ATOM = /`([^`\n]+)`|<([^<>\n]+)>|:([a-z0-9_+'-]+):/g;

function tokenize(line) {
  const items = [];
  const pushText = (raw) => { for (const ch of unescapeSlack(raw)) items.push(ch); };
  let last = 0;
  for (const m of line.matchAll(ATOM)) {
    pushText(line.slice(last, m.index));
    if (m[1] !== undefined) items.push({ node: () => renderCode(m[1]) });
    else if (m[2] !== undefined) items.push({ node: () => renderControl(m[2], false) });
    else items.push({ node: () => document.createTextNode(Object.hasOwn(EMOJI, m[3]) ? EMOJI[m[3]] : m[0]) });
    last = m.index + m[0].length;
  }
  pushText(line.slice(last));
  return items;
}

function renderCode(raw) {
  // Inside code nothing is formatted; control sequences show their text (no chip, no link).
  const out = el("code", {});
  let last = 0;
  for (const m of raw.matchAll(/<([^<>\n]+)>/g)) {
    out.append(document.createTextNode(unescapeSlack(raw.slice(last, m.index))));
    out.append(renderControl(m[1], true));
    last = m.index + m[0].length;
  }
  out.append(document.createTextNode(unescapeSlack(raw.slice(last))));
  return out;
}

const STYLE_TAG = { "*": "b", _: "i", "~": "s" };
const isSpace = (x) => typeof x === "string" && /\s/.test(x);
const isWordChar = (x) => typeof x === "string" && /[\p{L}\p{N}]/u.test(x);

// *bold*, _italic_, ~strike~ as Slack applies them: the opening mark not after a letter or digit and not
// before a space, the closing one not after a space and not before a letter or digit; marks nest.
function renderItems(items, start, end, parent) {
  let buf = "";
  const flush = () => { if (buf) { parent.append(document.createTextNode(buf)); buf = ""; } };
  for (let i = start; i < end; i++) {
    const item = items[i];
    if (typeof item !== "string") { flush(); parent.append(item.node()); continue; }
    const tag = STYLE_TAG[item];
    if (tag && !isWordChar(items[i - 1]) && i + 1 < end && !isSpace(items[i + 1]) && items[i + 1] !== item) {
      let j = i + 1;
      for (; j < end; j++) {
        if (items[j] === item && !isSpace(items[j - 1]) && j > i + 1 && !isWordChar(items[j + 1])) break;
      }
      if (j < end) {
        flush();
        const node = el(tag, {});
        renderItems(items, i + 1, j, node);
        parent.append(node);
        i = j;
        continue;
      }
    }
    buf += item;
  }
  flush();
}

function renderLine(line, parent) {
  const items = tokenize(line);
  renderItems(items, 0, items.length, parent);
}

function renderMrkdwn(text) {
  const out = el("span", { class: "mrkdwn" });
  // ```pre``` blocks first: their content is shown as written (entities decoded), never formatted.
  const parts = text.split(/```([\s\S]*?)```/);
  parts.forEach((part, k) => {
    if (k % 2 === 1) {
      const pre = el("pre", {});
      pre.append(...renderCode(part.replace(/^\n/, "")).childNodes);
      out.append(pre);
      return;
    }
    // A pre block is a block of its own: the line break right before or after it is not shown again.
    if (k > 0) part = part.replace(/^\n/, "");
    if (k < parts.length - 1) part = part.replace(/\n$/, "");
    if (!part) return;
    part.split("\n").forEach((line, i) => {
      if (i > 0) out.append(el("br"));
      const quote = /^(&gt;|>) ?/.exec(line);
      if (quote) {
        const q = el("span", { class: "quote" });
        renderLine(line.slice(quote[0].length), q);
        out.append(q);
      } else {
        renderLine(line, out);
      }
    });
  });
  return out;
}

function renderText(obj) {
  if (!obj || typeof obj.text !== "string") return el("span");
  return obj.type === "mrkdwn" ? renderMrkdwn(obj.text) : renderPlain(obj);
}

// ---- Block Kit -----------------------------------------------------------------------------------------

function askConfirm(confirm) {
  return new Promise((resolve) => {
    ui.confirmOpen = true;
    const done = (answer) => { ui.confirmOpen = false; closeDialog(); resolve(answer); };
    openDialog(
      el("h2", {}, plainString(confirm.title) || "Are you sure?"),
      el("p", {}, renderText(confirm.text)),
      el("div", { class: "buttons" },
        el("button", { type: "button", id: "confirm-deny", onclick: () => done(false) },
          plainString(confirm.deny) || "Cancel"),
        el("button", { type: "button", id: "confirm-ok", class: confirm.style === "danger" ? "danger" : "primary",
          onclick: () => done(true) }, plainString(confirm.confirm) || "Yes")),
    );
  });
}

async function click(source, element, value) {
  if (element.confirm && !(await askConfirm(element.confirm))) return;
  const body = { user: ui.user, channel: source.channel, ts: source.ts, action_id: element.action_id };
  if (value !== undefined) body.value = value;
  status(`Sending ${element.action_id}…`);
  status(describeDelivery(`click ${element.action_id}`, await postJSON("/_emulator/click", body)));
  refresh();
}

function renderElement(element, source) {
  if (element.type === "button") {
    return el("button", {
      type: "button",
      class: element.style || "",
      dataset: { actionId: element.action_id || "" },
      onclick: () => click(source, element, element.value),
    }, renderPlain(element.text));
  }
  if (element.type === "static_select" || element.type === "overflow") {
    const select = el("select", { dataset: { actionId: element.action_id || "" } },
      el("option", { value: "" }, plainString(element.placeholder) || "Choose…"));
    for (const opt of element.options || []) select.append(el("option", { value: opt.value }, plainString(opt.text)));
    select.addEventListener("change", () => { if (select.value) click(source, element, select.value); });
    return select;
  }
  if (element.type === "image") return el("span", { class: "muted" }, `[image: ${element.alt_text || ""}]`);
  return el("span", { class: "muted" }, `[${element.type}]`);
}

function renderBlock(block, source) {
  const node = el("div", { class: "block " + block.type, dataset: { blockId: block.block_id || "" } });
  switch (block.type) {
    case "header": node.append(renderText(block.text)); break;
    case "divider": node.append(el("hr")); break;
    case "section": {
      const body = el("div", { class: "section-body" });
      if (block.text) body.append(el("div", {}, renderText(block.text)));
      if (block.fields) body.append(el("div", { class: "fields" }, ...block.fields.map((f) => el("div", {}, renderText(f)))));
      node.append(body);
      if (block.accessory) { node.classList.add("has-accessory"); node.append(renderElement(block.accessory, source)); }
      break;
    }
    case "context":
      for (const item of block.elements || []) {
        node.append(item.type === "image" ? el("span", { class: "muted" }, `[${item.alt_text || "image"}]`) : renderText(item));
      }
      break;
    case "actions":
      for (const element of block.elements || []) node.append(renderElement(element, source));
      break;
    case "image": node.append(el("span", { class: "muted" }, `[image: ${block.alt_text || ""}]`)); break;
    default: node.append(el("span", { class: "muted" }, `[${block.type} block]`));
  }
  return node;
}

function renderMessage(msg, extraClass) {
  const source = { channel: msg.channel, ts: msg.ts };
  const author = msg.subtype === "ephemeral" ? "keyturn (only visible to you)" : userName(msg.user) || msg.user;
  const when = new Date(parseFloat(msg.ts) * 1000).toLocaleTimeString();
  const node = el("div", { class: "message " + (extraClass || ""), dataset: { ts: msg.ts } },
    el("div", { class: "meta" }, el("b", {}, author), when, msg.edited ? el("span", { class: "edited" }, "(edited)") : null));
  if (msg.blocks && msg.blocks.length) {
    for (const block of msg.blocks) node.append(renderBlock(block, source));
  } else {
    node.append(el("div", {}, renderMrkdwn(msg.text || "")));
  }
  if (msg.replies && msg.replies.length) {
    node.append(el("div", { class: "thread" }, ...msg.replies.map((r) => renderMessage(r))));
  }
  return node;
}

// ---- modal ---------------------------------------------------------------------------------------------

function openDialog(...children) {
  const dialog = document.getElementById("dialog");
  dialog.replaceChildren(...children);
  document.getElementById("overlay").hidden = false;
}

function closeDialog() {
  document.getElementById("overlay").hidden = true;
  document.getElementById("dialog").replaceChildren();
  ui.dialogViewId = null;
}

function renderView(view) {
  const inputs = [];
  const form = el("form", { id: "view-form" });
  for (const block of view.blocks || []) {
    if (block.type !== "input") { form.append(renderBlock(block, {})); continue; }
    const element = block.element || {};
    const id = `in-${block.block_id}`;
    const field = element.multiline
      ? el("textarea", { id, rows: "3", dataset: { blockId: block.block_id } })
      : el("input", { id, dataset: { blockId: block.block_id } });
    if (element.initial_value) field.value = element.initial_value;
    if (element.placeholder) field.placeholder = plainString(element.placeholder);
    inputs.push({ block, element, field });
    form.append(el("label", { for: id }, plainString(block.label)), field);
    const error = view.errors && view.errors[block.block_id];
    if (error) form.append(el("div", { class: "input-error" }, error));
  }
  const submit = async (event) => {
    event.preventDefault();
    const values = {};
    for (const { block, element, field } of inputs) values[block.block_id] = { [element.action_id]: field.value };
    const result = await postJSON("/_emulator/submit_view", { user: ui.user, view_id: view.id, values });
    status(describeDelivery("submit", result));
    ui.dialogViewId = null; // re-render with the errors (or close)
    refresh();
  };
  form.addEventListener("submit", submit);
  const close = async () => {
    await postJSON("/_emulator/close_view", { user: ui.user, view_id: view.id });
    closeDialog();
    refresh();
  };
  openDialog(
    el("h2", {}, plainString(view.title)),
    form,
    el("div", { class: "buttons" },
      el("button", { type: "button", id: "view-close", onclick: close }, plainString(view.close) || "Cancel"),
      view.submit ? el("button", { type: "submit", id: "view-submit", class: "primary", form: "view-form" }, plainString(view.submit)) : null),
  );
  ui.dialogViewId = view.id + ":" + view.hash + ":" + JSON.stringify(view.errors || {});
}

// ---- permalinks ---------------------------------------------------------------------------------------
// chat.getPermalink answers http://HOST:PORT/#<channel>/<ts>: open that conversation, as a user who can see
// it if the current one cannot, then scroll to the message and highlight it.

function parseHash() {
  const m = /^#([A-Z0-9]{1,40})\/(\d{1,12}\.\d{1,6})$/.exec(location.hash);
  return m ? { channel: m[1], ts: m[2] } : null;
}

function viewerFor(target) {
  const st = ui.state;
  const human = (id) => st.users.some((u) => u.id === id && !u.is_bot);
  const channel = st.channels.find((c) => c.id === target.channel);
  if (channel) return channel.members.includes(ui.user) ? ui.user : channel.members.find(human) || ui.user;
  const owner = st.users.find((u) => !u.is_bot && "D" + u.id.slice(1) === target.channel);
  return owner ? owner.id : ui.user;
}

function showTarget() {
  const target = ui.target;
  if (!target) return;
  const node = [...document.querySelectorAll("#messages .message")].find((n) => n.dataset.ts === target.ts);
  if (!node) return; // not posted yet (or gone): keep trying on the next refresh
  node.classList.add("highlight");
  node.scrollIntoView({ block: "center" });
  ui.highlightTs = target.ts;
  ui.target = null;
}

// ---- page ----------------------------------------------------------------------------------------------

function conversations() {
  const st = ui.state;
  return [...st.channels.filter((c) => c.members.includes(ui.user)), ...st.ims.filter((c) => c.user === ui.user)];
}

function render() {
  const st = ui.state;
  document.getElementById("team-name").textContent = `${st.team.name} (${st.team.id})`;
  document.getElementById("bot-url").textContent = st.bot_url ? `bot: ${st.bot_url}` : "bot URL not set";
  const select = document.getElementById("user-select");
  if (select.options.length === 0) {
    for (const u of st.users.filter((x) => !x.is_bot)) select.append(el("option", { value: u.id }, `${u.name} — ${u.real_name}`));
  }
  if (!st.users.some((u) => u.id === ui.user && !u.is_bot)) {
    ui.user = select.options[0].value;
    localStorage.setItem("kt-user", ui.user);
  }
  if (ui.stateUser !== ui.user) {
    // Fetched for no user (the first load: every user's ephemerals) or for the one selected before: fetch
    // this user's state before showing anything private.
    ui.forceRender = true;
    refresh();
    return;
  }
  if (ui.target) {
    const viewer = viewerFor(ui.target);
    if (viewer !== ui.user) { // this user cannot see it: switch, and render with that user's state
      ui.user = viewer;
      localStorage.setItem("kt-user", viewer);
      ui.forceRender = true;
      refresh();
      return;
    }
    ui.channel = ui.target.channel;
  }
  select.value = ui.user;

  const convs = conversations();
  if (!convs.some((c) => c.id === ui.channel)) ui.channel = convs.length ? convs[0].id : "";
  const sidebar = document.getElementById("sidebar");
  sidebar.replaceChildren(el("h3", {}, "Channels"));
  for (const c of convs) {
    if (c.is_im && !sidebar.querySelector("h3.dm")) sidebar.append(el("h3", { class: "dm" }, "Direct messages"));
    sidebar.append(el("a", {
      class: c.id === ui.channel ? "active" : "",
      dataset: { channel: c.id },
      onclick: () => { ui.target = null; ui.channel = c.id; localStorage.setItem("kt-channel", c.id); render(); },
    }, c.is_im ? `keyturn (DM)` : `# ${c.name}`));
  }

  const conv = convs.find((c) => c.id === ui.channel);
  document.getElementById("channel-title").textContent = conv ? (conv.is_im ? "Direct message with keyturn" : `# ${conv.name}`) : "";
  const list = document.getElementById("messages");
  const items = conv ? conv.messages.map((m) => ({ ts: m.ts, node: renderMessage(m) })) : [];
  // Only the selected user's ephemerals, whatever the state holds: they are private to that user in Slack.
  for (const e of st.ephemerals.filter((x) => x.channel === ui.channel && x.user === ui.user)) items.push({ ts: e.ts, node: renderMessage(e, "ephemeral") });
  items.sort((a, b) => parseFloat(a.ts) - parseFloat(b.ts));
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.replaceChildren(...items.map((i) => i.node));
  if (ui.highlightTs) {
    for (const n of list.querySelectorAll(".message")) if (n.dataset.ts === ui.highlightTs) n.classList.add("highlight");
  }
  if (ui.target) showTarget();
  else if (atBottom) list.scrollTop = list.scrollHeight;

  if (!ui.confirmOpen) {
    const view = st.views.filter((v) => v.user === ui.user && v.type === "modal").pop();
    if (!view) { if (!document.getElementById("overlay").hidden) closeDialog(); }
    else if (ui.dialogViewId !== view.id + ":" + view.hash + ":" + JSON.stringify(view.errors || {})) renderView(view);
  }
}

async function refresh() {
  try {
    const user = ui.user;
    const resp = await fetch(`/_emulator/state?user=${encodeURIComponent(user)}`, { cache: "no-store" });
    const st = await resp.json();
    // The user was switched while this was in flight: the switch's own refresh renders. Rendering this
    // answer would show the previous user's ephemerals and views under the new user's name.
    if (user !== ui.user) return;
    if (st.version !== ui.version || !ui.state || ui.forceRender || user !== ui.stateUser) {
      ui.state = st;
      ui.stateUser = user;
      ui.version = st.version;
      ui.forceRender = false;
      render();
    } else {
      ui.state.bot_url = st.bot_url;
    }
  } catch (e) {
    status("emulator unreachable");
  }
}

document.getElementById("user-select").addEventListener("change", (event) => {
  ui.target = null;
  ui.user = event.target.value;
  localStorage.setItem("kt-user", ui.user);
  ui.forceRender = true;
  closeDialog();
  refresh();
});

document.getElementById("command-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("command-input");
  const line = input.value.trim();
  const match = /^(\/\S+)\s*([\s\S]*)$/.exec(line);
  if (!match) { status("A slash command starts with /, e.g. /keyturn help"); return; }
  const result = await postJSON("/_emulator/command", { user: ui.user, channel: ui.channel, command: match[1], text: match[2] });
  status(describeDelivery(match[1], result));
  if (result.data.ok) input.value = "";
  refresh();
});

window.addEventListener("hashchange", () => {
  ui.target = parseHash();
  ui.forceRender = true;
  refresh();
});

ui.target = parseHash();
refresh();
setInterval(refresh, 1000);
