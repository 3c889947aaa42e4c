// Keyturn Slack emulator page. Vanilla JS, no build step. Every piece of text from the bot or the workspace
// is put in the page with textContent or createTextNode, never innerHTML.
"use strict";

const ui = {
  user: localStorage.getItem("kt-user") || "",
  channel: localStorage.getItem("kt-channel") || "",
  state: null,
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

// ---- mrkdwn --------------------------------------------------------------------------------------------

const ENTITIES = { "&lt;": "<", "&gt;": ">", "&amp;": "&" };
function unescapeSlack(text) {
  return text.replace(/&(lt|gt|amp);/g, (m) => ENTITIES[m]);
}

function userName(id) {
  const u = ui.state && ui.state.users.find((x) => x.id === id);
  return u ? u.name : id;
}

function renderControl(inner) {
  // Slack's <...> control sequences: mentions, channels, special mentions, links.
  const [target, label] = inner.split("|", 2);
  if (target.startsWith("@")) return el("span", { class: "mention" }, "@" + (label || userName(target.slice(1))));
  if (target.startsWith("#")) return el("span", { class: "mention" }, "#" + (label || target.slice(1)));
  if (target.startsWith("!subteam^")) return el("span", { class: "mention" }, label || "@group");
  if (target.startsWith("!")) return el("span", { class: "mention" }, "@" + target.slice(1).split("^")[0]);
  if (/^(https?:\/\/|mailto:)/i.test(target)) {
    return el("a", { href: target, target: "_blank", rel: "noopener noreferrer" }, unescapeSlack(label || target));
  }
  return document.createTextNode("<" + unescapeSlack(inner) + ">");
}

function renderInline(text, parent) {
  // `code`, *bold*, _italic_, ~strike~ — one level, as Slack mostly renders them.
  const pattern = /`([^`]+)`|\*([^*\n]+)\*|_([^_\n]+)_|~([^~\n]+)~/g;
  let last = 0;
  for (const m of text.matchAll(pattern)) {
    if (m.index > last) parent.append(document.createTextNode(unescapeSlack(text.slice(last, m.index))));
    const [tag, body] = m[1] !== undefined ? ["code", m[1]] : m[2] !== undefined ? ["b", m[2]]
      : m[3] !== undefined ? ["i", m[3]] : ["s", m[4]];
    parent.append(el(tag, {}, unescapeSlack(body)));
    last = m.index + m[0].length;
  }
  if (last < text.length) parent.append(document.createTextNode(unescapeSlack(text.slice(last))));
}

function renderMrkdwn(text) {
  const out = el("span", { class: "mrkdwn" });
  text.split("\n").forEach((line, i) => {
    if (i > 0) out.append(el("br"));
    let last = 0;
    for (const m of line.matchAll(/<([^<>]+)>/g)) {
      renderInline(line.slice(last, m.index), out);
      out.append(renderControl(m[1]));
      last = m.index + m[0].length;
    }
    renderInline(line.slice(last), out);
  });
  return out;
}

function renderText(obj) {
  if (!obj || typeof obj.text !== "string") return el("span");
  return obj.type === "mrkdwn" ? renderMrkdwn(obj.text) : el("span", {}, obj.text);
}

// ---- Block Kit -----------------------------------------------------------------------------------------

function askConfirm(confirm) {
  return new Promise((resolve) => {
    ui.confirmOpen = true;
    const done = (answer) => { ui.confirmOpen = false; closeDialog(); resolve(answer); };
    openDialog(
      el("h2", {}, (confirm.title && confirm.title.text) || "Are you sure?"),
      el("p", {}, renderText(confirm.text)),
      el("div", { class: "buttons" },
        el("button", { type: "button", id: "confirm-deny", onclick: () => done(false) },
          (confirm.deny && confirm.deny.text) || "Cancel"),
        el("button", { type: "button", id: "confirm-ok", class: confirm.style === "danger" ? "danger" : "primary",
          onclick: () => done(true) }, (confirm.confirm && confirm.confirm.text) || "Yes")),
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
    }, (element.text && element.text.text) || "");
  }
  if (element.type === "static_select" || element.type === "overflow") {
    const select = el("select", { dataset: { actionId: element.action_id || "" } },
      el("option", { value: "" }, (element.placeholder && element.placeholder.text) || "Choose…"));
    for (const opt of element.options || []) select.append(el("option", { value: opt.value }, opt.text.text));
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
      if (block.text) node.append(el("div", {}, renderText(block.text)));
      if (block.fields) node.append(el("div", { class: "fields" }, ...block.fields.map((f) => el("div", {}, renderText(f)))));
      if (block.accessory) node.append(renderElement(block.accessory, source));
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
  const author = msg.subtype === "ephemeral" ? "keyturn (only visible to you)" : userName(msg.user);
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
    if (element.placeholder) field.placeholder = element.placeholder.text;
    inputs.push({ block, element, field });
    form.append(el("label", { for: id }, (block.label && block.label.text) || ""), field);
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
    el("h2", {}, (view.title && view.title.text) || ""),
    form,
    el("div", { class: "buttons" },
      el("button", { type: "button", id: "view-close", onclick: close }, (view.close && view.close.text) || "Cancel"),
      view.submit ? el("button", { type: "submit", id: "view-submit", class: "primary", form: "view-form" }, view.submit.text) : null),
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
  return [...st.channels.filter((c) => c.members.includes(ui.user)), ...st.ims];
}

function render() {
  const st = ui.state;
  document.getElementById("team-name").textContent = `${st.team.name} (${st.team.id})`;
  document.getElementById("bot-url").textContent = st.bot_url ? `bot: ${st.bot_url}` : "bot URL not set";
  const select = document.getElementById("user-select");
  if (select.options.length === 0) {
    for (const u of st.users.filter((x) => !x.is_bot)) select.append(el("option", { value: u.id }, `${u.name} — ${u.real_name}`));
  }
  if (!st.users.some((u) => u.id === ui.user && !u.is_bot)) ui.user = select.options[0].value;
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
  for (const e of st.ephemerals.filter((x) => x.channel === ui.channel)) items.push({ ts: e.ts, node: renderMessage(e, "ephemeral") });
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
    const resp = await fetch(`/_emulator/state?user=${encodeURIComponent(ui.user)}`, { cache: "no-store" });
    const st = await resp.json();
    if (st.version !== ui.version || !ui.state || ui.forceRender) {
      ui.state = st;
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
