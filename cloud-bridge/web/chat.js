// Spotter viewer page: live chat on the viewer socket: the chat's state (pure, tested under Node) and its elements.
//
// ChatState takes what arrives on the socket and what the viewer does, with the time passed in,
// and returns the frames to send and the changes to show; it touches no DOM, socket or clock.
// ChatView draws those changes. Nothing from the network is rendered as HTML: names and texts go
// in through textContent only. The wire is docs' viewer-wire contract (issue 21): `auth`, `guest`,
// `say`, `delete`, `ban` out; `session`, `chat_history`, `chat`, `said`, `chat_deleted`, `banned`,
// `refused`, `error` in.

/** Kinds of server message that belong to the chat. */
export const CHAT_KINDS = new Set(["session", "chat_history", "chat", "said", "chat_deleted", "banned", "refused"]);

/** The bridge's default `[chat] max_chars`; the page cannot know another, and the bridge has the last word. */
export const MAX_CHARS = 500;
/** `[chat] guest` names: 1-32 characters after trimming. */
export const MAX_NAME_CHARS = 32;
/** After a rate refusal the page holds messages this long itself, so a viewer pressing Enter on
 * and on never earns the bridge's 20 refusals in 10 s (which close the socket, cards and all). */
export const RATE_HOLD_MS = 1_000;
/** A moderator's Ban button: ten minutes. */
export const BAN_SECS = 600;
/** Messages kept on the page; older ones scroll out of the list. */
export const KEEP_MESSAGES = 200;

/** sessionStorage keys: the chat token, and a ban of this tab's user (so a reload does not retry). */
export const TOKEN_KEY = "spotter.chat.token";
export const BAN_KEY = "spotter.chat.ban";

// C0 and C1 control characters, DEL. A newline is one too: chat messages are one line.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
const isCount = (v) => Number.isSafeInteger(v) && v >= 0;
const isText = (v) => typeof v === "string" && v !== "";

/** Length in characters (code points), as the bridge counts them, not UTF-16 units. */
export const charCount = (s) => [...s].length;

/** Validates one chat message from the wire (`Message`); a clean copy or null. */
export function parseMessage(raw) {
  if (!isObject(raw) || !isText(raw.id) || typeof raw.text !== "string" || !isCount(raw.at_ms)) return null;
  const u = raw.user;
  if (!isObject(u) || !isText(u.id) || typeof u.name !== "string") return null;
  return {
    id: raw.id,
    user: { id: u.id, name: u.name, moderator: u.moderator === true, guest: u.guest === true },
    text: raw.text,
    at_ms: raw.at_ms,
  };
}

/** Validates one chat kind of server message (already JSON-parsed); a clean copy or null. */
export function parseChatMessage(msg) {
  if (!isObject(msg)) return null;
  switch (msg.kind) {
    case "session": {
      const u = msg.user;
      if (!isObject(u) || !isText(u.id) || typeof u.name !== "string") return null;
      return {
        kind: "session",
        user: { id: u.id, name: u.name, send: u.send === true, moderate: u.moderate === true, guest: u.guest === true },
        expires_at_ms: isCount(msg.expires_at_ms) ? msg.expires_at_ms : null,
        token: isText(msg.token) ? msg.token : null,
        // present while this user is banned
        banned_until_ms: isCount(msg.banned_until_ms) ? msg.banned_until_ms : null,
      };
    }
    case "chat_history":
      if (!Array.isArray(msg.messages)) return null;
      return { kind: "chat_history", messages: msg.messages.map(parseMessage).filter((m) => m !== null) };
    case "chat": {
      const message = parseMessage(msg.message);
      return message ? { kind: "chat", message } : null;
    }
    case "said":
      return isText(msg.id) ? { kind: "said", nonce: isText(msg.nonce) ? msg.nonce : null, id: msg.id } : null;
    case "chat_deleted":
      return isText(msg.id) ? { kind: "chat_deleted", id: msg.id } : null;
    case "banned":
      return isText(msg.user) && isCount(msg.until_ms) ? { kind: "banned", user: msg.user, until_ms: msg.until_ms } : null;
    case "refused":
      return {
        kind: "refused",
        nonce: isText(msg.nonce) ? msg.nonce : null,
        code: typeof msg.code === "string" ? msg.code : "",
        message: typeof msg.message === "string" ? msg.message : "",
      };
    default:
      return null;
  }
}

/** Checks a message before it is sent: `{ok: true, text}` or `{ok: false, code, message}` (the bridge's codes). */
export function checkDraft(raw, maxChars = MAX_CHARS) {
  const text = String(raw ?? "").trim();
  if (text === "") return { ok: false, code: "empty", message: "write something first" };
  if (CONTROL.test(text)) return { ok: false, code: "control_chars", message: "the message has control characters" };
  const n = charCount(text);
  if (n > maxChars) {
    return { ok: false, code: "too_long", message: `at most ${maxChars} characters (this one has ${n})` };
  }
  return { ok: true, text };
}

/** Checks a guest name: `{ok: true, name}` or `{ok: false, code, message}`. */
export function checkName(raw) {
  const name = String(raw ?? "").trim();
  if (name === "") return { ok: false, code: "bad_name", message: "pick a name first" };
  if (CONTROL.test(name)) return { ok: false, code: "bad_name", message: "the name has control characters" };
  if (charCount(name) > MAX_NAME_CHARS) {
    return { ok: false, code: "bad_name", message: `a name has at most ${MAX_NAME_CHARS} characters` };
  }
  return { ok: true, name };
}

/**
 * Takes a chat token out of a URL fragment (`#token=...`, alone or among `&`-separated fields,
 * the way a shop's site links or embeds the page). Returns `{token, hash}` where `hash` is the
 * fragment to leave in the address bar ("" for none), or null when the fragment has no token.
 */
export function takeFragmentToken(hash) {
  const body = String(hash ?? "").replace(/^#/, "");
  if (body === "") return null;
  let token = null;
  const rest = [];
  for (const part of body.split("&")) {
    if (part.startsWith("token=")) {
      try {
        token = decodeURIComponent(part.slice("token=".length));
      } catch {
        token = null;
      }
    } else if (part !== "") {
      rest.push(part);
    }
  }
  if (token === null && !body.split("&").some((p) => p.startsWith("token="))) return null;
  return { token: token || null, hash: rest.length ? `#${rest.join("&")}` : "" };
}

/** Reads the ban end from the close reason the bridge gives a banned user's socket (4003). */
export function banEndFromReason(reason) {
  const m = /banned until (\S+)/.exec(String(reason ?? ""));
  if (!m) return null;
  const t = Date.parse(m[1]);
  return Number.isFinite(t) ? t : null;
}

/** The close code of a banned user's sockets. */
export const CLOSE_BANNED = 4003;

/**
 * The chat as this page sees it. Socket events and viewer actions go in (time passed in); each
 * returns `{send, changes}`: the frame to send (or null) and a list of changes for the view:
 * `{op: "reset", messages}`, `{op: "add", message}`, `{op: "remove", id}`,
 * `{op: "pending", nonce, text, at_ms}`, `{op: "settle", nonce}`, `{op: "notice", text}` (a line
 * in the log, e.g. a ban a moderator should see), `{op: "refused", code, message, text}` (shown
 * to the sender, `text` is theirs back to edit), `{op: "status"}` (mode or session changed:
 * redraw the form from `view()`).
 */
export class ChatState {
  messages = new Map(); // id -> message, oldest first
  pending = new Map(); // nonce -> {nonce, text, at_ms, id}
  session = null; // {user, expires_at_ms} once the bridge accepted a token
  guests = false; // the bridge hands out guest tokens (hello.chat.guests)
  enabled = true; // the bridge has chat on for this stream (hello.chat present)
  authPending = false;
  authRefused = null; // the bridge's reason, when it refused our token
  connected = false;
  holdUntilMs = 0; // no say before this (after a rate refusal)
  #deleted = new Set();
  #nonce = 0;
  #storage;
  #keep;

  /** `storage`: a Storage-like object (sessionStorage in the page; a Map-backed stub in tests). */
  constructor({ storage = null, keep = KEEP_MESSAGES } = {}) {
    this.#storage = storage;
    this.#keep = keep;
  }

  get token() {
    return this.#get(TOKEN_KEY);
  }

  /** The ban of this tab's user, `{user, until_ms}`, or null. */
  get ban() {
    try {
      const ban = JSON.parse(this.#get(BAN_KEY) ?? "null");
      return isObject(ban) && isCount(ban.until_ms) ? ban : null;
    } catch {
      return null;
    }
  }

  /** Keeps a token from the page's link for this tab (perhaps another user's: any ban kept is dropped). */
  setToken(token) {
    this.#set(TOKEN_KEY, token);
    this.#remove(BAN_KEY);
    this.authRefused = null;
  }

  /** Whether this tab's user is banned at `nowMs`. */
  banned(nowMs) {
    const ban = this.ban;
    if (!ban || ban.until_ms <= nowMs) return false;
    // A ban is of a user: a tab that now holds another user's session is not banned.
    return !this.session || ban.user === null || ban.user === this.session.user.id;
  }

  /** What the form shows: `{mode, notice}`, mode one of connecting, off, banned, compose, readonly, guest. */
  view(nowMs) {
    const ban = this.ban;
    if (this.connected && !this.enabled) return { mode: "off", notice: "Chat is off for this stream." };
    if (this.banned(nowMs)) return { mode: "banned", notice: "You are banned from this chat.", until_ms: ban.until_ms };
    const session = this.session && (this.session.expires_at_ms ?? Infinity) > nowMs ? this.session : null;
    if (session?.user.send) return { mode: "compose", notice: "" };
    if (session) return { mode: "readonly", notice: "You can read this chat but not post in it." };
    if (!this.connected || this.authPending) return { mode: "connecting", notice: "Joining the chat…" };
    const refused = this.authRefused ? `Your chat sign-in was refused (${this.authRefused}). ` : "";
    const ended = this.session ? "Your chat session has ended. " : "";
    if (this.guests) return { mode: "guest", notice: `${refused}${ended}`.trim() };
    return { mode: "readonly", notice: `${refused}${ended}Chat is read-only: sign in on the shop's site to take part.` };
  }

  /** A socket opened: present the stored token, unless this tab's user is banned. */
  opened(nowMs) {
    this.session = null;
    const token = this.token;
    const frame = token && !this.banned(nowMs) ? { kind: "auth", token } : null;
    this.authPending = frame !== null;
    return { send: frame, changes: [{ op: "status" }] };
  }

  /** The socket closed (`code`, `reason` from its close event). */
  closed(code, reason, nowMs) {
    const changes = [{ op: "status" }];
    const user = this.session?.user.id ?? null;
    this.connected = false;
    this.session = null;
    this.authPending = false;
    if (code === CLOSE_BANNED) {
      const until = banEndFromReason(reason) ?? this.ban?.until_ms ?? nowMs + BAN_SECS * 1000;
      this.#set(BAN_KEY, JSON.stringify({ user, until_ms: until }));
    }
    // Messages never accepted go back to their writer; accepted ones wait for the next history.
    for (const p of [...this.pending.values()]) {
      if (p.id !== null) continue;
      this.pending.delete(p.nonce);
      changes.push({ op: "settle", nonce: p.nonce });
      changes.push({ op: "refused", code: "offline", message: "the chat connection dropped before the message was sent", text: p.text });
    }
    return { send: null, changes };
  }

  /** `hello`: the socket is the stream's; whether guests may join. */
  hello(msg) {
    this.connected = true;
    this.enabled = msg.chat !== null && msg.chat !== undefined;
    this.guests = msg.chat?.guests === true;
    return { send: null, changes: [{ op: "status" }] };
  }

  /** An `error` from the bridge. While a token is being presented, it is the token's refusal. */
  error(message) {
    if (!this.authPending) return { send: null, changes: [] };
    this.authPending = false;
    this.authRefused = message || "refused";
    this.#remove(TOKEN_KEY); // a refused token is not presented again
    return { send: null, changes: [{ op: "status" }] };
  }

  /** One chat kind of server message (from parseChatMessage). */
  receive(msg, nowMs) {
    const changes = [];
    switch (msg.kind) {
      case "session":
        this.session = { user: msg.user, expires_at_ms: msg.expires_at_ms };
        this.authPending = false;
        this.authRefused = null;
        if (msg.token) this.#set(TOKEN_KEY, msg.token);
        // The bridge's word on a ban is the truth: kept while it lasts, forgotten once it is lifted.
        if (msg.banned_until_ms !== null && msg.banned_until_ms > nowMs) {
          this.#set(BAN_KEY, JSON.stringify({ user: msg.user.id, until_ms: msg.banned_until_ms }));
        } else if (this.ban?.user === msg.user.id) {
          this.#remove(BAN_KEY);
        }
        changes.push({ op: "status" });
        break;
      case "chat_history": {
        // After a reconnect, perhaps to another bridge that started after this page: what the
        // history holds replaces what this page has over the same span (a message missing from
        // that span was deleted meanwhile), and older messages, which that bridge may never
        // have seen, are kept before it.
        const incoming = msg.messages.filter((m) => !this.#deleted.has(m.id));
        const ids = new Set(incoming.map((m) => m.id));
        const oldest = incoming.length ? Math.min(...incoming.map((m) => m.at_ms)) : Infinity;
        const kept = [...this.messages.values()].filter((m) => m.at_ms < oldest && !ids.has(m.id));
        this.messages = new Map([...kept, ...incoming].map((m) => [m.id, m]));
        this.#trim();
        changes.push({ op: "reset", messages: [...this.messages.values()] });
        for (const p of [...this.pending.values()]) {
          if (p.id === null) continue; // still on its way: `said` or `refused` comes
          this.pending.delete(p.nonce);
          changes.push({ op: "settle", nonce: p.nonce });
        }
        break;
      }
      case "chat": {
        const m = msg.message;
        if (this.messages.has(m.id) || this.#deleted.has(m.id)) break;
        this.messages.set(m.id, m);
        for (const p of this.pending.values()) {
          if (p.id === m.id) {
            this.pending.delete(p.nonce);
            changes.push({ op: "settle", nonce: p.nonce });
            break;
          }
        }
        changes.push({ op: "add", message: m });
        for (const id of this.#trim()) changes.push({ op: "remove", id });
        break;
      }
      case "said": {
        const p = msg.nonce === null ? null : this.pending.get(msg.nonce);
        if (!p) break;
        if (this.messages.has(msg.id) || this.#deleted.has(msg.id)) {
          this.pending.delete(p.nonce); // its `chat` came first
          changes.push({ op: "settle", nonce: p.nonce });
        } else {
          p.id = msg.id;
        }
        break;
      }
      case "chat_deleted":
        this.#deleted.add(msg.id);
        if (this.#deleted.size > 4 * this.#keep) this.#deleted.delete(this.#deleted.values().next().value);
        if (this.messages.delete(msg.id)) changes.push({ op: "remove", id: msg.id });
        for (const p of [...this.pending.values()]) {
          if (p.id === msg.id) {
            this.pending.delete(p.nonce);
            changes.push({ op: "settle", nonce: p.nonce });
          }
        }
        break;
      case "banned": {
        const me = this.session?.user.id;
        if (me !== undefined && msg.user === me) {
          this.#set(BAN_KEY, JSON.stringify({ user: me, until_ms: msg.until_ms }));
          changes.push({ op: "status" });
        } else if (this.session?.user.moderate) {
          changes.push({ op: "notice", text: `${this.nameOf(msg.user)} is banned`, until_ms: msg.until_ms, at_ms: nowMs });
        }
        break;
      }
      case "refused": {
        const p = msg.nonce === null ? null : this.pending.get(msg.nonce);
        if (p) {
          this.pending.delete(p.nonce);
          changes.push({ op: "settle", nonce: p.nonce });
        }
        if (msg.code === "banned" && !this.banned(nowMs)) {
          // The bridge knows of a ban this tab missed: stop sending until it says otherwise.
          this.#set(BAN_KEY, JSON.stringify({ user: this.session?.user.id ?? null, until_ms: nowMs + BAN_SECS * 1000 }));
          changes.push({ op: "status" });
        }
        if (msg.code === "rate" || msg.code === "stream_rate") this.holdUntilMs = nowMs + RATE_HOLD_MS;
        if (msg.code === "unauthenticated") {
          this.session = null;
          changes.push({ op: "status" });
        }
        changes.push({ op: "refused", code: msg.code, message: msg.message || msg.code, text: p?.text ?? null });
        break;
      }
      default:
        break;
    }
    return { send: null, changes };
  }

  /** The viewer sends `raw`: the `say` frame and a pending line, or a refusal shown at once. */
  say(raw, nowMs) {
    if (this.view(nowMs).mode !== "compose") {
      return { send: null, changes: [{ op: "refused", code: "not_allowed", message: "you cannot post in this chat now", text: raw }] };
    }
    const draft = checkDraft(raw);
    if (!draft.ok) return { send: null, changes: [{ op: "refused", code: draft.code, message: draft.message, text: raw }] };
    if (nowMs < this.holdUntilMs) {
      return { send: null, changes: [{ op: "refused", code: "rate", message: "slow down: wait a moment before the next message", text: raw }] };
    }
    const nonce = `c${++this.#nonce}`;
    this.pending.set(nonce, { nonce, text: draft.text, at_ms: nowMs, id: null });
    return {
      send: { kind: "say", text: draft.text, nonce },
      changes: [{ op: "pending", nonce, text: draft.text, at_ms: nowMs, user: this.session.user }],
    };
  }

  /** The viewer asks to join as a guest called `raw`. */
  guest(raw) {
    const name = checkName(raw);
    if (!name.ok) return { send: null, changes: [{ op: "refused", code: name.code, message: name.message, text: raw }] };
    return { send: { kind: "guest", name: name.name }, changes: [] };
  }

  /** A moderator deletes message `id`. */
  remove(id) {
    return { send: this.session?.user.moderate ? { kind: "delete", id } : null, changes: [] };
  }

  /** A moderator bans the author of a message for `secs`. */
  banUser(userId, secs = BAN_SECS, reason = undefined) {
    if (!this.session?.user.moderate || userId === this.session.user.id) return { send: null, changes: [] };
    const frame = { kind: "ban", user: userId, secs };
    if (reason) frame.reason = reason;
    return { send: frame, changes: [] };
  }

  /** Whether this tab may delete messages and ban their authors. */
  get moderator() {
    return this.session?.user.moderate === true;
  }

  /** A user's name from the messages on the page (their id when none is). */
  nameOf(userId) {
    for (const m of this.messages.values()) if (m.user.id === userId) return m.user.name;
    return userId;
  }

  #trim() {
    const dropped = [];
    while (this.messages.size > this.#keep) {
      const oldest = this.messages.keys().next().value;
      this.messages.delete(oldest);
      dropped.push(oldest);
    }
    return dropped;
  }

  #get(key) {
    try {
      return this.#storage?.getItem(key) ?? null;
    } catch {
      return null; // storage disabled
    }
  }

  #set(key, value) {
    try {
      this.#storage?.setItem(key, value);
    } catch {
      // storage disabled or full: the chat still works for this page's life
    }
  }

  #remove(key) {
    try {
      this.#storage?.removeItem(key);
    } catch {
      // as above
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The elements.

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const timeFormat = new Map();

/** A `<time>` with the machine-readable instant and the viewer's local hour and minute. */
function timeElement(ms) {
  const t = el("time", "msg-time");
  const date = new Date(ms);
  t.dateTime = date.toISOString();
  let fmt = timeFormat.get("hm");
  if (!fmt) {
    fmt = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
    timeFormat.set("hm", fmt);
  }
  t.textContent = fmt.format(date);
  return t;
}

const clock = (ms) => new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" }).format(new Date(ms));

/**
 * The chat's elements: `#chat-messages` (the log), the notice, the guest form and the message
 * form. `send(frame)` puts a frame on the viewer socket and says whether it could.
 */
export class ChatView {
  constructor(parts, state, send, now = () => Date.now()) {
    this.parts = parts;
    this.state = state;
    this.send = send;
    this.now = now;
    this.items = new Map(); // message id -> li
    this.pendingItems = new Map(); // nonce -> li
    this.timer = null;

    const { form, input, guestForm, guestName, log } = parts;
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const text = input.value;
      const out = this.do(state.say(text, now()));
      if (out.sent) {
        input.value = "";
        this.count();
        this.alert("");
      }
    });
    input.addEventListener("input", () => this.count());
    guestForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.alert("", parts.guestError);
      this.do(state.guest(guestName.value), parts.guestError);
    });
    // One listener for every message's moderation buttons.
    log.addEventListener("click", (ev) => {
      const button = ev.target.closest?.("button[data-action]");
      if (!button) return;
      const li = button.closest("li[data-id]");
      if (!li) return;
      if (button.dataset.action === "delete") this.do(state.remove(li.dataset.id));
      if (button.dataset.action === "ban") this.do(state.banUser(li.dataset.user));
    });
    this.count();
    this.status();
  }

  /** Applies a `{send, changes}` from the state; returns whether its frame went out. */
  do({ send, changes }, errorNode = this.parts.error) {
    let sent = false;
    if (send) {
      sent = this.send(send);
      if (!sent) {
        for (const c of changes) if (c.op === "pending") this.state.pending.delete(c.nonce);
        this.alert("Not connected to the chat right now; try again in a moment.", errorNode);
        return { sent };
      }
    }
    for (const change of changes) this.apply(change, errorNode);
    return { sent };
  }

  apply(change, errorNode) {
    const { log } = this.parts;
    switch (change.op) {
      case "reset": {
        const keep = new Set(change.messages.map((m) => m.id));
        for (const [id, li] of this.items) {
          if (!keep.has(id)) {
            li.remove();
            this.items.delete(id);
          }
        }
        let at = log.firstChild;
        for (const m of change.messages) {
          let li = this.items.get(m.id);
          if (!li) {
            li = this.messageItem(m);
            this.items.set(m.id, li);
          }
          if (li !== at) log.insertBefore(li, at);
          else at = at.nextSibling;
          at = li.nextSibling;
        }
        this.scroll(true);
        break;
      }
      case "add": {
        const stick = this.atBottom();
        const li = this.messageItem(change.message);
        this.items.set(change.message.id, li);
        const firstPending = this.pendingItems.values().next().value ?? null;
        log.insertBefore(li, firstPending);
        this.scroll(stick);
        break;
      }
      case "remove":
        this.items.get(change.id)?.remove();
        this.items.delete(change.id);
        break;
      case "pending": {
        const li = this.messageItem({ id: "", user: change.user, text: change.text, at_ms: change.at_ms }, true);
        li.dataset.nonce = change.nonce;
        // Announced once, when the bridge's copy replaces it, not twice.
        li.setAttribute("aria-hidden", "true");
        this.pendingItems.set(change.nonce, li);
        log.append(li);
        this.scroll(true);
        break;
      }
      case "settle":
        this.pendingItems.get(change.nonce)?.remove();
        this.pendingItems.delete(change.nonce);
        break;
      case "notice": {
        const stick = this.atBottom();
        const li = el("li", "msg msg--notice");
        li.append(el("span", "msg-text", `${change.text} until ${clock(change.until_ms)}.`));
        log.append(li);
        this.scroll(stick);
        break;
      }
      case "refused": {
        // A guest name's refusal shows by the name form, everything else by the message form.
        if (GUEST_CODES.has(change.code)) errorNode = this.parts.guestError;
        if (change.text && this.parts.input.value === "" && errorNode === this.parts.error) {
          this.parts.input.value = change.text; // theirs to fix or resend
          this.count();
        }
        this.alert(sentence(change.message), errorNode);
        break;
      }
      case "status":
        this.status();
        break;
      default:
        break;
    }
    this.parts.empty.hidden = log.children.length > 0;
  }

  /** One message's `<li>`: name, time, text, and a moderator's buttons. */
  messageItem(m, pending = false) {
    const li = el("li", pending ? "msg msg--pending" : "msg");
    if (!pending) li.dataset.id = m.id;
    li.dataset.user = m.user.id;
    const head = el("p", "msg-head");
    head.append(el("span", "msg-name", m.user.name || m.user.id));
    if (m.user.moderator) head.append(el("span", "msg-badge", "Moderator"));
    else if (m.user.guest) head.append(el("span", "msg-badge msg-badge--guest", "Guest"));
    head.append(timeElement(m.at_ms));
    if (pending) head.append(el("span", "msg-state", "sending…"));
    li.append(head, el("p", "msg-text", m.text));
    if (!pending && this.state.moderator) li.append(this.modTools(m));
    return li;
  }

  modTools(m) {
    const tools = el("div", "msg-tools");
    const who = m.user.name || m.user.id;
    const del = el("button", "msg-action", "Delete");
    del.type = "button";
    del.dataset.action = "delete";
    del.append(el("span", "visually-hidden", ` message from ${who}`));
    tools.append(del);
    if (m.user.id !== this.state.session?.user.id) {
      const ban = el("button", "msg-action msg-action--ban", "Ban 10 min");
      ban.type = "button";
      ban.dataset.action = "ban";
      ban.append(el("span", "visually-hidden", ` (${who})`)); // the accessible name: "Ban 10 min (Ann)"
      tools.append(ban);
    }
    return tools;
  }

  /** Redraws the form and notice from the state's view; a moderator's buttons follow the session. */
  status() {
    const { notice, form, input, send, guestForm } = this.parts;
    const now = this.now();
    const view = this.state.view(now);
    const chatting = view.mode === "compose";
    form.hidden = !chatting && view.mode !== "connecting";
    input.disabled = !chatting;
    send.disabled = !chatting;
    guestForm.hidden = view.mode !== "guest";
    let text = view.notice;
    if (view.mode === "banned") text = `You are banned from this chat until ${clock(view.until_ms)}.`;
    notice.textContent = text;
    notice.hidden = text === "";
    notice.dataset.mode = view.mode;
    this.parts.root.dataset.mode = view.mode;
    this.parts.who.textContent = this.state.session && chatting ? `Chatting as ${this.state.session.user.name}` : "";
    // Moderation buttons appear or go with the moderator's session.
    const mod = this.state.moderator;
    for (const [, li] of this.items) {
      const tools = li.querySelector(".msg-tools");
      if (mod && !tools) li.append(this.modTools({ id: li.dataset.id, user: { id: li.dataset.user, name: li.querySelector(".msg-name")?.textContent ?? "" } }));
      if (!mod && tools) tools.remove();
    }
    // A ban or a session ends by the clock: redraw then.
    clearTimeout(this.timer);
    const ends = [view.until_ms, this.state.session?.expires_at_ms].filter((t) => Number.isFinite(t) && t > now);
    if (ends.length) {
      const wait = Math.min(Math.min(...ends) - now + 50, 2_147_000_000);
      this.timer = setTimeout(() => this.expired(), wait);
    }
  }

  /** A ban or a session ran out: present the token again if there is one. */
  expired() {
    if (this.state.connected && !this.state.session && !this.state.authPending) {
      const { send } = this.state.opened(this.now());
      if (send) this.send(send);
    }
    this.status();
  }

  count() {
    const { input, counter } = this.parts;
    const n = charCount(input.value);
    counter.replaceChildren(`${n}/${MAX_CHARS}`, el("span", "visually-hidden", " characters"));
    counter.classList.toggle("chat-count--over", n > MAX_CHARS);
  }

  alert(text, node = this.parts.error) {
    node.textContent = text;
    node.hidden = text === "";
  }

  atBottom() {
    const { log } = this.parts;
    return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  }

  scroll(stick) {
    if (stick) this.parts.log.scrollTop = this.parts.log.scrollHeight;
  }
}

/** Refusals about a guest's name, shown by the name form. */
const GUEST_CODES = new Set(["bad_name", "guests_off"]);

const sentence = (s) => {
  const t = String(s ?? "").trim();
  if (t === "") return "The chat refused that.";
  const first = t.charAt(0).toUpperCase() + t.slice(1);
  return /[.!?]$/.test(first) ? first : `${first}.`;
};

/**
 * Wires the chat to the page: `parts` are its elements, `send` puts a frame on the viewer socket.
 * Returns the socket's side: `open()`, `close(code, reason)`, `hello(msg)`, `error(message)`,
 * `receive(msg)`.
 */
export function startChat(parts, send, storage) {
  const state = new ChatState({ storage });
  const view = new ChatView(parts, state, send);
  return {
    state,
    view,
    open: () => view.do(state.opened(Date.now())),
    close: (code, reason) => view.do(state.closed(code, reason, Date.now())),
    hello: (msg) => view.do(state.hello(msg)),
    error: (message) => view.do(state.error(message)),
    receive: (msg) => view.do(state.receive(msg, Date.now())),
    setToken: (token) => state.setToken(token),
  };
}
