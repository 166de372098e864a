// wapipe inbox: a client of the public REST API (/api/whatsapp/...) and of
// its WebSocket, nothing else. Every piece of data goes into the page as
// text (textContent; nothing is parsed as HTML): customers write what
// they like.
//
// Live updates: the WebSocket streams the events log. The page keeps the
// last `seq` it saw and, after a drop, reconnects with `after=SEQ` (with
// backoff), so nothing is missed and nothing is reloaded.
"use strict";

(() => {
  const API = "/api/whatsapp";
  const KEY_STORE = "wapipe.inbox.key";
  const $ = (id) => document.getElementById(id);

  const state = {
    key: null,
    seq: null, // last event seen; null until the first one
    loaded: false, // the lists were read after the socket opened
    pending: [], // events that came while the lists were loading
    chats: new Map(),
    labels: new Map(),
    agents: [],
    current: null, // the open chat's id
    messages: new Map(),
    socket: null,
    attempts: 0,
    opens: 0,
    retry: null,
  };

  // ---- small helpers ---------------------------------------------------

  /** An element with attributes and children (strings become text). */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      const fields = Object.entries(err.fields || {}).map(([k, v]) => `${k}: ${v}`);
      super([err.message || `HTTP ${status}`, ...fields].join("; "));
      this.status = status;
      this.code = err.code;
    }
  }

  async function api(method, path, body, headers) {
    const init = { method, headers: { Authorization: `Bearer ${state.key}`, ...(headers || {}) } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(API + path, init);
    const text = await resp.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch (_) {
      json = null;
    }
    if (resp.status === 401 && path !== "/chats?limit=1") {
      logout("The key was refused (revoked or expired?).");
    }
    if (!resp.ok) throw new ApiError(resp.status, json);
    return json;
  }

  let toastTimer = null;
  function toast(text, bad) {
    const t = $("toast");
    t.textContent = text;
    t.classList.toggle("bad", Boolean(bad));
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.textContent = ""; }, 5000);
  }

  /** Runs an action of a form or button; shows its error instead of throwing. */
  async function act(fn, done) {
    try {
      await fn();
      if (done) toast(done);
    } catch (e) {
      toast(e.message, true);
    }
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const today = new Date().toDateString() === d.toDateString();
    return today
      ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : d.toLocaleDateString([], { month: "short", day: "numeric" });
  }

  // Times are compared as instants: RFC 3339 strings with different
  // fractions of a second do not sort as text.
  const ms = (iso) => Date.parse(iso) || 0;
  const newer = (a, b) => !b || !a || ms(a.updatedAt) >= ms(b.updatedAt);
  const chatName = (c) => c.customerName || c.phoneNumber || "unknown";
  const agentName = (id) => {
    const a = state.agents.find((x) => x.id === id);
    return a ? a.name : "an agent";
  };

  // ---- login -----------------------------------------------------------

  async function login(key) {
    state.key = key.trim();
    // Checked by a call that any key may make.
    await api("GET", "/chats?limit=1");
    sessionStorage.setItem(KEY_STORE, state.key);
    $("login").hidden = true;
    $("app").hidden = false;
    connect();
  }

  function logout(why) {
    sessionStorage.removeItem(KEY_STORE);
    if (state.socket) {
      state.socket.onclose = null;
      state.socket.close();
    }
    clearTimeout(state.retry);
    Object.assign(state, { key: null, seq: null, loaded: false, pending: [], current: null, socket: null });
    state.chats.clear();
    document.body.classList.remove("open");
    $("chat").hidden = true;
    $("placeholder").hidden = false;
    $("app").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = why || "";
    $("key").value = "";
    $("key").focus();
  }

  // ---- the WebSocket ---------------------------------------------------

  function setLive(text, on) {
    $("live").textContent = text;
    $("live").classList.toggle("on", on);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const after = state.seq === null ? "" : `?after=${state.seq}`;
    // Browsers cannot set headers on a WebSocket: the key travels as a
    // subprotocol, next to the one the server speaks.
    const ws = new WebSocket(`${scheme}//${location.host}${API}/ws${after}`, [
      "wapipe.v1",
      `wapipe.bearer.${state.key}`,
    ]);
    state.socket = ws;
    ws.onopen = () => {
      state.attempts = 0;
      state.opens += 1;
      // How many times the socket opened: a reconnect without a reload counts up.
      $("live").dataset.opens = String(state.opens);
      setLive("live", true);
      // Read the lists only once the socket is open: whatever changes
      // after this reaches us as an event, so nothing falls in between.
      if (!state.loaded) loadAll();
    };
    ws.onmessage = (m) => {
      let ev;
      try {
        ev = JSON.parse(m.data);
      } catch (_) {
        return;
      }
      if (typeof ev.seq === "number") {
        state.seq = Math.max(state.seq || 0, ev.seq);
        $("live").dataset.seq = String(state.seq);
      }
      if (state.loaded) apply(ev);
      else state.pending.push(ev);
    };
    ws.onclose = () => {
      if (state.socket !== ws) return;
      setLive("reconnecting", false);
      // Without a seq there is nothing to resume from: read the lists again.
      if (state.seq === null) state.loaded = false;
      const delay = Math.min(30000, 500 * 2 ** state.attempts) * (0.5 + Math.random() / 2);
      state.attempts += 1;
      state.retry = setTimeout(async () => {
        // A refused key looks like any dropped socket: ask the API.
        if (state.attempts > 2) {
          try {
            await api("GET", "/chats?limit=1");
          } catch (e) {
            if (e.status === 401) return logout("The key was refused (revoked or expired?).");
          }
        }
        if (state.key) connect();
      }, delay);
    };
  }

  function apply(ev) {
    const d = ev.data || {};
    switch (ev.type) {
      case "chat.created":
      case "chat.updated":
        upsertChat(d);
        break;
      case "message.created":
      case "message.updated":
        if (ev.chatId === state.current) upsertMessage(d);
        break;
      case "note.created":
        if (ev.chatId === state.current) addNote(d);
        break;
      case "followup.reminder":
        toast(`Follow-up due: ${d.title || "(untitled)"}`);
        loadFollowups();
        if (ev.chatId === state.current) loadChatFollowups();
        break;
      default:
        break;
    }
  }

  // ---- lists -----------------------------------------------------------

  async function loadAll() {
    try {
      const [labels, agents] = await Promise.all([
        api("GET", "/labels?limit=200").catch(() => ({ data: [] })),
        api("GET", "/agents?limit=200").catch(() => ({ data: [] })),
      ]);
      state.labels = new Map(labels.data.map((l) => [l.id, l]));
      state.agents = agents.data.filter((a) => a.isActive && !a.isDeleted);
      fillSelect($("f-label"), [["", "Any"], ...[...state.labels.values()].map((l) => [l.id, l.name])], $("f-label").value);
      const anyAgent = fillSelect($("agent"), state.agents.map((a) => [a.id, a.name]), undefined, "No agents");
      $("assign").disabled = $("transfer").disabled = !anyAgent;
      await Promise.all([loadChats(), loadFollowups(), loadTemplates()]);
      state.loaded = true;
      const pending = state.pending;
      state.pending = [];
      pending.forEach(apply);
      if (state.current) openChat(state.current, false);
    } catch (e) {
      toast(e.message, true);
    }
  }

  /** Fills a select; with no options, one disabled line says why. */
  function fillSelect(select, options, keep, none) {
    clear(select);
    for (const [value, text] of options) select.append(el("option", { value }, text));
    if (!options.length && none) select.append(el("option", { value: "", disabled: true, selected: true }, none));
    if (keep !== undefined) select.value = keep;
    return options.length > 0;
  }

  async function loadChats() {
    const q = new URLSearchParams({ limit: "100" });
    if ($("f-status").value) q.set("status", $("f-status").value);
    if ($("f-label").value) q.set("label", $("f-label").value);
    const page = await api("GET", `/chats?${q}`);
    state.chats = new Map(page.data.map((c) => [c.id, c]));
    renderChats();
  }

  function matches(c) {
    const status = $("f-status").value;
    const label = $("f-label").value;
    return !c.isDeleted && (!status || c.status === status) && (!label || c.labels.includes(label));
  }

  function upsertChat(c) {
    const old = state.chats.get(c.id);
    if (!newer(c, old)) return;
    if (matches(c)) state.chats.set(c.id, c);
    else state.chats.delete(c.id);
    renderChats();
    if (c.id === state.current) renderHead(c);
  }

  function renderChats() {
    const list = $("chats");
    const focused = document.activeElement && document.activeElement.dataset.id;
    clear(list);
    const chats = [...state.chats.values()].sort((a, b) =>
      ms(b.lastMessageTime || b.createdAt) - ms(a.lastMessageTime || a.createdAt));
    for (const c of chats) {
      const unread = c.unreadCount > 0
        ? el("span", { class: "badge", "aria-label": `${c.unreadCount} unread` }, String(c.unreadCount))
        : el("span", { class: "time" }, when(c.lastMessageTime || c.createdAt));
      const tags = [c.status, c.assignedTo ? agentName(c.assignedTo) : null,
        ...c.labels.map((id) => state.labels.get(id)).filter(Boolean).map((l) => l.name)]
        .filter(Boolean).join(" · ");
      const button = el("button", {
        type: "button",
        "data-id": c.id,
        "aria-current": c.id === state.current ? "true" : "false",
        onclick: () => openChat(c.id, true),
      },
      el("span", { class: "name" }, chatName(c)), unread,
      el("span", { class: "preview" }, c.lastMessage ? c.lastMessage.text : ""),
      el("span", { class: "time" }, c.unreadCount > 0 ? when(c.lastMessageTime || c.createdAt) : ""),
      el("span", { class: "tags" }, tags));
      list.append(el("li", {}, button));
    }
    $("chats-empty").hidden = chats.length > 0;
    if (focused) {
      const again = list.querySelector(`button[data-id="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  async function loadFollowups() {
    const page = await api("GET", "/followups?status=pending&limit=20").catch(() => ({ data: [] }));
    const list = $("followups");
    clear(list);
    for (const f of page.data) {
      const chat = state.chats.get(f.chatId);
      list.append(el("li", {}, `${when(f.scheduledAt)} · ${f.title || "(untitled)"}`,
        chat ? ` · ${chatName(chat)}` : ""));
    }
    if (!page.data.length) list.append(el("li", { class: "muted" }, "Nothing pending."));
  }

  async function loadTemplates() {
    const page = await api("GET", "/templates?limit=200").catch(() => ({ data: [] }));
    // Only Meta's templates can be sent as templates (quick replies are local).
    const usable = page.data.filter((t) => t.status === "approved" && !t.isDeleted);
    $("send-template").disabled = !fillSelect($("template"), usable.map((t) =>
      [JSON.stringify([t.whatsappTemplateName || t.name, t.language]), `${t.name} (${t.language})`]),
    undefined, "No approved templates");
  }

  // ---- one chat --------------------------------------------------------

  async function openChat(id, focus) {
    state.current = id;
    state.messages = new Map();
    document.body.classList.add("open");
    $("placeholder").hidden = true;
    $("chat").hidden = false;
    clear($("messages"));
    renderChats();
    try {
      const [chat, messages] = await Promise.all([
        api("GET", `/chats/${id}`),
        api("GET", `/chats/${id}/messages?limit=100`),
      ]);
      if (state.current !== id) return;
      renderHead(chat);
      // Newest first from the API; oldest first on screen.
      messages.data.reverse().forEach(upsertMessage);
      loadNotes();
      loadChatFollowups();
      if (chat.unreadCount > 0) upsertChat(await api("PUT", `/chats/${id}/read`));
      if (focus) $("reply").focus();
    } catch (e) {
      toast(e.message, true);
    }
  }

  function renderHead(c) {
    $("chat-title").textContent = chatName(c);
    const who = c.assignedTo ? `assigned to ${agentName(c.assignedTo)}` : c.status;
    $("chat-meta").textContent = `${c.phoneNumber || ""} · ${who}`;
    $("chat-meta").dataset.status = c.status;
    $("resolve").textContent = c.status === "resolved" || c.status === "closed" ? "Reopen" : "Resolve";
    $("unassign").disabled = !c.assignedTo;
    if (c.assignedTo) $("agent").value = c.assignedTo;
    const chips = $("chat-labels");
    clear(chips);
    for (const id of c.labels) {
      const l = state.labels.get(id);
      const name = l ? l.name : "label";
      chips.append(el("li", {}, name, el("button", {
        type: "button",
        "aria-label": `Remove the label ${name}`,
        onclick: () => act(() => api("DELETE", `/chats/${c.id}/labels/${id}`).then(refreshChat)),
      }, "×")));
    }
    $("add-label").disabled = !fillSelect($("label-pick"), [...state.labels.values()]
      .filter((l) => !c.labels.includes(l.id)).map((l) => [l.id, l.name]), undefined, "No more labels");
  }

  async function refreshChat() {
    if (state.current) upsertChat(await api("GET", `/chats/${state.current}`));
  }

  function describe(m) {
    if (m.text) return m.text;
    if (m.template && m.template.name) return `[template ${m.template.name}]`;
    if (m.media) return `[${m.type}] ${m.media.caption || m.media.fileName || ""}`.trim();
    if (m.location) return `[location] ${m.location.name || ""} ${m.location.latitude}, ${m.location.longitude}`;
    return `[${m.type}]`;
  }

  function statusText(m) {
    if (m.direction === "inbound") return "received";
    if (m.status === "failed") {
      const e = m.error || {};
      return `failed: ${e.message || "no reason given"}${e.code ? ` (${e.code})` : ""}`;
    }
    return m.status;
  }

  function upsertMessage(m) {
    const old = state.messages.get(m.id);
    if (old && !newer(m, old.data)) return;
    const out = m.direction !== "inbound";
    // In a group, each inbound message names the member who wrote it.
    const member = m.participantId ? m.senderName || m.from : null;
    const who = out ? (m.senderType === "bot" ? "bot" : m.senderName || "agent") : member;
    const meta = [when(m.timestamp || m.createdAt), who, statusText(m)].filter(Boolean).join(" · ");
    const node = el("li", {
      class: `msg ${out ? "out" : "in"}${m.status === "failed" ? " failed" : ""}`,
      "data-id": m.id,
      "data-status": m.status,
    }, describe(m), el("span", { class: "meta" }, meta));
    const list = $("messages");
    if (old) old.node.replaceWith(node);
    else list.append(node);
    state.messages.set(m.id, { data: m, node });
    if (!old) node.scrollIntoView({ block: "nearest" });
  }

  async function loadNotes() {
    const id = state.current;
    const page = await api("GET", `/chats/${id}/notes?limit=50`).catch(() => ({ data: [] }));
    if (state.current !== id) return;
    clear($("notes"));
    page.data.slice().reverse().forEach(addNote);
  }

  function addNote(n) {
    const list = $("notes");
    if (list.querySelector(`[data-id="${CSS.escape(n.id)}"]`)) return;
    list.append(el("li", { "data-id": n.id }, n.note, el("span", { class: "muted" },
      ` · ${n.authorName || "admin"} · ${when(n.createdAt)}`)));
  }

  async function loadChatFollowups() {
    const id = state.current;
    const page = await api("GET", `/chats/${id}/followups?limit=50`).catch(() => ({ data: [] }));
    if (state.current !== id) return;
    const list = $("chat-followups");
    clear(list);
    for (const f of page.data) {
      list.append(el("li", {}, `${when(f.scheduledAt)} · ${f.title || "(untitled)"} · ${f.status}`));
    }
    if (!page.data.length) list.append(el("li", { class: "muted" }, "None."));
  }

  /** A send: an Idempotency-Key makes a retried click send once. */
  async function send(body) {
    const key = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
    const m = await api("POST", `/chats/${state.current}/messages`, body, { "Idempotency-Key": key });
    if (m && m.chatId === state.current) upsertMessage(m);
  }

  // ---- wiring ----------------------------------------------------------

  function on(id, event, fn) {
    $(id).addEventListener(event, fn);
  }

  function wire() {
    on("login-form", "submit", async (e) => {
      e.preventDefault();
      $("login-error").textContent = "";
      try {
        await login($("key").value);
      } catch (err) {
        state.key = null;
        $("login-error").textContent = err.status === 401 ? "This key is not valid." : err.message;
      }
    });
    on("logout", "click", () => logout());
    on("f-status", "change", () => act(loadChats));
    on("f-label", "change", () => act(loadChats));
    on("back", "click", () => {
      document.body.classList.remove("open");
      const b = $("chats").querySelector(`button[data-id="${CSS.escape(state.current || "")}"]`);
      (b || $("chats")).focus();
    });
    on("send-form", "submit", (e) => {
      e.preventDefault();
      const text = $("reply").value.trim();
      if (!text) return;
      act(async () => {
        await send({ type: "text", text });
        $("reply").value = "";
      });
    });
    on("reply", "keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("send-form").requestSubmit();
    });
    on("template-form", "submit", (e) => {
      e.preventDefault();
      const [name, language] = JSON.parse($("template").value);
      const raw = $("template-params").value.trim();
      const parameters = raw ? raw.split("|").map((p) => p.trim()) : [];
      act(async () => {
        await send({ type: "template", template: { name, language, parameters } });
        $("template-params").value = "";
      }, "Template queued.");
    });
    on("assign-form", "submit", (e) => {
      e.preventDefault();
      act(() => api("POST", `/chats/${state.current}/assign`, { agentId: $("agent").value })
        .then(upsertChat), "Assigned.");
    });
    on("transfer-form", "submit", (e) => {
      e.preventDefault();
      act(() => api("POST", `/chats/${state.current}/transfer`, {
        toAgentId: $("agent").value,
        reason: $("transfer-reason").value,
      }).then((c) => { $("transfer-reason").value = ""; upsertChat(c); }), "Transferred.");
    });
    on("resolve", "click", () => {
      const c = state.chats.get(state.current);
      const reopen = c && (c.status === "resolved" || c.status === "closed");
      act(() => api("PUT", `/chats/${state.current}`, { status: reopen ? "unassigned" : "resolved" })
        .then(upsertChat), reopen ? "Reopened." : "Resolved.");
    });
    on("unassign", "click", () => act(() => api("PUT", `/chats/${state.current}/unassign`).then(upsertChat)));
    on("label-form", "submit", (e) => {
      e.preventDefault();
      act(() => api("POST", `/chats/${state.current}/labels/${$("label-pick").value}`).then(refreshChat));
    });
    on("note-form", "submit", (e) => {
      e.preventDefault();
      act(async () => {
        addNote(await api("POST", `/chats/${state.current}/notes`, { note: $("note").value }));
        $("note").value = "";
      });
    });
    on("followup-form", "submit", (e) => {
      e.preventDefault();
      const at = new Date($("fu-when").value);
      act(async () => {
        await api("POST", "/followups", { chatId: state.current, title: $("fu-what").value, scheduledAt: at.toISOString() });
        $("fu-what").value = "";
        await Promise.all([loadChatFollowups(), loadFollowups()]);
      }, "Follow-up scheduled.");
    });
    // Arrow keys move through the chat list; Escape goes back to it.
    on("chats", "keydown", (e) => {
      if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
      const buttons = [...$("chats").querySelectorAll("button")];
      const i = buttons.indexOf(document.activeElement);
      const next = buttons[e.key === "ArrowDown" ? i + 1 : i - 1];
      if (next) {
        next.focus();
        e.preventDefault();
      }
    });
    on("main", "keydown", (e) => {
      if (e.key === "Escape" && document.body.classList.contains("open")) $("back").click();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    wire();
    const saved = sessionStorage.getItem(KEY_STORE);
    if (saved) login(saved).catch(() => logout());
    else $("key").focus();
  });
})();
