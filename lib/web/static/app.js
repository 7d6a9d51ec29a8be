// nanoclaw's page: plain JavaScript, no framework. Everything it shows comes from /ui/… after
// login (the cookie); text from messages is always put in as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const VIEWS = ["chat", "parts", "queues", "sessions", "memory", "cron", "usage", "approvals"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "onclick") node.addEventListener("click", value);
    else if (key === "style") node.style.cssText = value;       // the CSP allows no style attributes
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function notice(text) { $("notice").textContent = text || ""; }

async function call(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, {credentials: "same-origin", ...opts});
  if (response.status === 401) { showLogin(); throw new Error("log in first"); }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((data.error && data.error.message) || `HTTP ${response.status}`);
  return data;
}

// --- login ---

function showLogin() {
  $("nav").hidden = true;
  for (const v of VIEWS) $(v).hidden = true;
  $("login").hidden = false;
  $("token").focus();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  const response = await fetch("/login", {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({token: $("token").value})});
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    $("login-error").textContent = (data.error && data.error.message) || `HTTP ${response.status}`;
    return;
  }
  $("token").value = "";
  $("login").hidden = true;
  route();
});

$("logout").addEventListener("click", async () => {
  await fetch("/logout", {method: "POST", credentials: "same-origin"});
  showLogin();
});

// --- sections ---

async function route() {
  const view = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "chat";
  notice("");
  try {
    await LOAD[view]();
  } catch (e) {
    if ($("login").hidden) notice(e.message);
    return;
  }
  $("login").hidden = true;
  $("nav").hidden = false;
  for (const v of VIEWS) $(v).hidden = v !== view;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === "#" + view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function line(msg, extra) {
  const parts = [msg.text];
  if (msg.calls && msg.calls.length) parts.push((msg.text ? "\n" : "") + "→ " + msg.calls.join("\n→ "));
  const who = msg.role === "tool" ? `${msg.name || "tool"} result` : msg.role;
  return el("li", {class: `${msg.role} ${extra || ""}`},
            el("span", {class: "meta"}, who, msg.time ? " · " + msg.time.slice(0, 19).replace("T", " ") : ""),
            "\n", parts.join(""));
}

const LOAD = {
  async chat() {
    const messages = await call("/ui/chat");
    $("chat-log").replaceChildren(...messages.map((m) => line(m)));
  },
  async parts() {
    const o = await call("/ui/overview");
    $("health").replaceChildren(el("span", {class: o.healthy ? "ok" : "bad"},
      o.healthy ? "The gateway is healthy." : "A part has stopped or the worker is stuck."),
      ` Model: ${o.model}.`);
    $("part-list").replaceChildren(...o.parts.map((p) => el("li", {},
      el("strong", {}, p.name), " ",
      el("span", {class: p.alive ? "ok" : "bad"}, p.alive ? "running" : "stopped"),
      p.connected === null || p.connected === undefined ? "" :
        el("span", {class: p.connected ? "ok" : "bad"}, p.connected ? ", connected" : ", not connected"))),
      el("li", {}, el("strong", {}, "chat apps not enabled: "), o.channels_off.join(", ") || "none"));
  },
  async queues() {
    const [o, failed] = await Promise.all([call("/ui/overview"), call("/ui/failed")]);
    const q = o.queues;
    $("queue-counts").textContent = `Inbox: ${q.inbox.new} waiting, ${q.inbox.cur} in work, ` +
      `${q.inbox.failed} failed. Outbox: ${q.outbox.new} to send, ${q.outbox.cur} sending, ${q.outbox.failed} failed.`;
    const items = [];
    for (const box of ["inbox", "outbox"]) {
      for (const f of failed[box]) {
        const act = (action) => async () => {
          try { await call("/ui/failed", {box, name: f.name, action}); await LOAD.queues(); }
          catch (e) { notice(e.message); }
        };
        items.push(el("li", {},
          el("div", {class: "meta"}, `${box}/failed/${f.name}`, f.channel ? ` · ${f.channel}:${f.chat_id}` : ""),
          el("div", {}, f.text || `(${f.kind})`),
          el("div", {class: "error"}, "Why: ", f.reason || "not recorded"),
          el("div", {class: "actions"},
            el("button", {type: "button", onclick: act("retry")}, "Retry"),
            el("button", {type: "button", onclick: act("drop")}, "Drop"))));
      }
    }
    $("failed-list").replaceChildren(...(items.length ? items : [el("li", {}, "none")]));
  },
  async sessions() {
    const list = await call("/ui/sessions");
    $("session-list").replaceChildren(...(list.length ? list.map((s) => el("li", {},
      el("button", {type: "button", onclick: () => showSession(s)}, s.key || s.name),
      el("span", {class: "meta"}, ` ${Math.ceil(s.size / 1024)} KiB · ${s.updated.slice(0, 16).replace("T", " ")}`)))
      : [el("li", {}, "none")]));
  },
  async memory() {
    const m = await call("/ui/memory");
    $("memory-text").textContent = m.missing ? "none (no memory/MEMORY.md yet)" :
      (m.text || "(empty)") + (m.truncated ? "\n… (shortened)" : "");
  },
  async cron() {
    const jobs = await call("/ui/cron");
    $("job-list").replaceChildren(...(jobs.length ? jobs.map((j) => {
      const act = (action) => async () => {
        if (action === "remove" && !confirm(`Remove job ${j.name}?`)) return;
        try { await call("/ui/cron", {id: j.id, action}); await LOAD.cron(); }
        catch (e) { notice(e.message); }
      };
      return el("li", {},
        el("strong", {}, j.name), el("span", {class: "meta"}, ` ${j.id} · ${j.schedule}`),
        el("div", {}, j.message),
        el("div", {class: "meta"}, j.enabled ? `enabled, next ${j.next_run}` : "disabled",
           j.last_status ? ` · last: ${j.last_status}` : ""),
        el("div", {class: "actions"},
          el("button", {type: "button", onclick: act(j.enabled ? "disable" : "enable")}, j.enabled ? "Disable" : "Enable"),
          el("button", {type: "button", onclick: act("run")}, "Run now"),
          el("button", {type: "button", onclick: act("remove")}, "Remove")));
    }) : [el("li", {}, "none")]));
  },
  async usage() {
    const u = await call("/ui/usage");
    const limit = (used, cap, unit) => cap ? el("div", {},
      `${used.toLocaleString()} of ${cap.toLocaleString()} ${unit}`,
      el("div", {class: "bar", role: "img", "aria-label": `${Math.round(100 * used / cap)} %`},
         el("span", {style: `width:${Math.min(100, 100 * used / cap)}%`}))) :
      el("div", {}, `${used.toLocaleString()} ${unit} (no daily limit)`);
    const sources = Object.entries(u.by_source);
    $("usage-body").replaceChildren(
      el("p", {}, `${u.day}: ${u.calls} model call${u.calls === 1 ? "" : "s"}.`),
      limit(u.tokens, u.limits.daily_tokens, "tokens"),
      limit(Number(u.cost_usd.toFixed(4)), u.limits.daily_usd, "USD"),
      el("h3", {}, "By source"),
      el("ul", {class: "cards"}, ...(sources.length ? sources.map(([name, s]) =>
        el("li", {}, `${name}: ${s.calls} call${s.calls === 1 ? "" : "s"}, ${s.tokens.toLocaleString()} tokens, $${s.cost_usd.toFixed(4)}`))
        : [el("li", {}, "none")])));
  },
  async approvals() {
    const list = await call("/ui/approvals");
    $("approval-list").replaceChildren(...(list.length ? list.map((a) => {
      const act = (answer) => async () => {
        try { await call("/ui/approvals", {code: a.code, answer}); notice(`Sent "${answer} ${a.code}".`); await LOAD.approvals(); }
        catch (e) { notice(e.message); }
      };
      return el("li", {},
        el("div", {class: "meta"}, `code ${a.code}`, a.chat ? ` · asked in ${a.chat}` : "",
           a.expires ? ` · expires ${a.expires}` : ""),
        el("pre", {}, a.command), a.folder ? el("div", {class: "meta"}, `in ${a.folder}`) : "",
        el("div", {class: "actions"},
          el("button", {type: "button", onclick: act("yes")}, "Approve"),
          el("button", {type: "button", onclick: act("no")}, "Deny")));
    }) : [el("li", {}, "none")]));
  },
};

async function showSession(s) {
  const messages = await call("/ui/session?name=" + encodeURIComponent(s.name)).catch((e) => notice(e.message));
  if (!messages) return;
  $("transcript-title").textContent = `Transcript: ${s.key || s.name}`;
  $("transcript").replaceChildren(...(messages.length ? messages.map((m) => line(m)) : [el("li", {}, "empty")]));
  $("transcript-title").focus();
}

// --- the chat: the steps of the turn as they are written, then the reply ---

async function send(text) {
  const log = $("chat-log");
  log.append(line({role: "user", text, time: new Date().toISOString()}));
  const waiting = el("li", {class: "waiting"}, "…");
  log.append(waiting);
  waiting.scrollIntoView({block: "end"});
  const response = await fetch("/ui/chat", {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({text})});
  if (response.status === 401) return showLogin();
  if (!response.ok || !response.body) {
    const data = await response.json().catch(() => ({}));
    waiting.textContent = (data.error && data.error.message) || `HTTP ${response.status}`;
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const name = (block.match(/^event: (.*)$/m) || [])[1];
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      if (!name || !data) continue;
      const obj = JSON.parse(data);
      if (name === "step") {
        const step = line(obj, "step");
        if (waiting.parentNode) log.insertBefore(step, waiting); else log.append(step);
        if (obj.role === "assistant" && !obj.calls.length) waiting.remove();
      } else if (name === "notice") {        // the model is down: the message waits
        waiting.textContent = obj.text;
      } else if (name === "reply") {
        waiting.remove();
        for (const old of log.querySelectorAll("li.step.assistant")) {
          if (!old.textContent.includes("→")) old.remove();     // the reply takes its place
        }
        log.append(line({role: "assistant", text: obj.text, time: new Date().toISOString()},
                        obj.error ? "error" : ""));
      } else {
        waiting.textContent = obj.message;
      }
      log.lastElementChild.scrollIntoView({block: "end"});
    }
  }
}

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("chat-text").value;
  if (!text.trim()) return;
  $("chat-text").value = "";
  try { await send(text); } catch (e) { notice(e.message); }
});

$("chat-text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("chat-form").requestSubmit();
  }
});

window.addEventListener("hashchange", route);
route();
