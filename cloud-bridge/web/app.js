// Spotter viewer page: plays the stream's video, keeps the product cards in step with the bridge's WebSocket, and runs the chat on it.
//
// The top half is pure logic (parsing, recovery cursor, backoff) with no DOM or sockets, exported
// so it can be tested under Node; the bottom half wires it to the page. The cards live in
// cards.js, the chat in chat.js. Nothing received from the network is ever parsed as HTML: text
// goes in through textContent, and links and image sources go through safeUrl so a catalog entry
// cannot smuggle in a javascript: URL.

import { CardBook, CardList } from "./cards.js";
import { CHAT_KINDS, parseChatMessage, startChat, takeFragmentToken } from "./chat.js";
import { backoffDelay, preferredPlayer, startVideo } from "./player.js";
import { CardSchedule, reached } from "./sync.js";

export { backoffDelay };

/** Wire version of the viewer socket this page speaks (protocol/src/viewer.rs). */
export const PROTOCOL = 1;

const CARD_TYPES = new Set(["new", "update", "end"]);

/** Reads `{studio, stream}` from a `/watch/<studio>/<stream>` path (any prefix before it), or null. */
export function parseStreamPath(pathname) {
  const parts = pathname.split("/").filter((p) => p !== "");
  if (parts.length < 3 || parts[parts.length - 3] !== "watch") return null;
  try {
    const studio = decodeURIComponent(parts[parts.length - 2]);
    const stream = decodeURIComponent(parts[parts.length - 1]);
    return studio && stream ? { studio, stream } : null;
  } catch {
    return null; // malformed percent-encoding
  }
}

const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
const isCount = (v) => Number.isSafeInteger(v) && v >= 0;
const isText = (v) => typeof v === "string" && v !== "";

/** Validates one card from the wire; returns a clean copy or null. */
export function parseCard(raw) {
  if (!isObject(raw) || !CARD_TYPES.has(raw.type)) return null;
  if (!isText(raw.event_id) || !isCount(raw.seq)) return null;
  const p = raw.product;
  if (!isObject(p) || !isText(p.sku) || typeof p.name !== "string") return null;
  if (typeof p.price !== "string" || typeof p.currency !== "string" || typeof p.url !== "string") {
    return null;
  }
  return {
    type: raw.type,
    event_id: raw.event_id,
    seq: raw.seq,
    score: typeof raw.score === "number" ? raw.score : null,
    captured_at_ms: isCount(raw.captured_at_ms) ? raw.captured_at_ms : 0,
    // The frame the appearance was first recognised in; a bridge that does not say: this event's.
    appeared_at_ms: isCount(raw.appeared_at_ms) ? raw.appeared_at_ms : isCount(raw.captured_at_ms) ? raw.captured_at_ms : 0,
    product: {
      sku: p.sku,
      name: p.name,
      price: p.price,
      currency: p.currency,
      url: p.url,
      image: typeof p.image === "string" && p.image !== "" ? p.image : null,
    },
  };
}

/** Parses one text frame from the bridge; null for anything this page does not understand. */
export function parseServerMessage(text) {
  if (typeof text !== "string") return null;
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    return null;
  }
  if (!isObject(msg)) return null;
  switch (msg.kind) {
    case "hello":
      if (typeof msg.epoch !== "string" || !isCount(msg.offset) || !Array.isArray(msg.onscreen)) {
        return null;
      }
      return {
        kind: "hello",
        protocol: msg.protocol,
        epoch: msg.epoch,
        offset: msg.offset,
        resync: msg.resync === true,
        onscreen: msg.onscreen.map(parseCard).filter((c) => c !== null && c.type !== "end"),
        viewers: isCount(msg.viewers) ? msg.viewers : null,
        // What chat offers before a token; null from a bridge with chat off (or without chat).
        chat: isObject(msg.chat) ? { guests: msg.chat.guests === true } : null,
      };
    case "event": {
      const card = parseCard(msg.card);
      return isCount(msg.offset) && card ? { kind: "event", offset: msg.offset, card } : null;
    }
    case "error":
      return { kind: "error", message: String(msg.message ?? "") };
    case "viewers":
      return isCount(msg.count) ? { kind: "viewers", count: msg.count } : null;
    default:
      return CHAT_KINDS.has(msg.kind) ? parseChatMessage(msg) : null;
  }
}

/**
 * Where this page is in the stream, for `?epoch=&offset=` on reconnect. The epoch is the agent's
 * session and an event's offset its sequence number, the same on every bridge replica; offsets
 * increase but may skip numbers (events a bridge refused). `next` means "every event before it
 * is here", the same meaning as `hello.offset`: one past the last offset seen. An event below it
 * (the synthetic ones a bridge makes from a snapshot carry the snapshot's offset) moves nothing.
 */
export class Cursor {
  epoch = null;
  next = null;

  hello(msg) {
    this.epoch = msg.epoch;
    this.next = msg.offset;
  }

  event(offset) {
    if (this.next === null || offset >= this.next) this.next = offset + 1;
  }

  /** Query string for the next connection ("" before the first hello). */
  query() {
    if (this.epoch === null || this.next === null) return "";
    return `?epoch=${encodeURIComponent(this.epoch)}&offset=${this.next}`;
  }
}

// ---------------------------------------------------------------------------------------------
// The page.

const PING_EVERY_MS = 25_000;
// A connection that stayed up this long resets the backoff; one that drops sooner keeps growing it,
// so a bridge that accepts and at once closes is not hammered.
const STABLE_AFTER_MS = 10_000;

function showConn(node, state, text) {
  node.dataset.state = state;
  node.textContent = text;
}

/**
 * Keeps one WebSocket to the stream's hub open, recovering from where it left off. `hooks` hear
 * what is not a card: `open()`, `close(code, reason)`, `hello(msg)`, `viewers(count)`,
 * `chat(msg)` (the chat kinds) and `error(message)`. Returns `send(frame)` for the chat, `stop`,
 * and `frame(capture)`, which the player calls with the capture time of the frame on screen:
 * each card waits in a schedule until the frame it was recognised in is displayed (sync.js).
 */
function connectCards(url, list, conn, hooks = {}) {
  const book = new CardBook();
  const cursor = new Cursor();
  const schedule = new CardSchedule();
  /** The last `{mode, ms}` the player reported: until it says, the cards wait for it. */
  let shown = { mode: "waiting", ms: null };
  let attempt = 0;
  let socket = null;
  let retryTimer = null;
  let pingTimer = null;
  let liveSince = null;
  let everLive = false;
  let stopped = false;

  function onMessage(ev) {
    const msg = parseServerMessage(ev.data);
    if (!msg) {
      console.warn("spotter: ignored a frame this page does not understand");
      return;
    }
    if (msg.kind === "hello") {
      if (msg.protocol !== PROTOCOL) {
        console.warn(`spotter: bridge speaks protocol ${msg.protocol}, this page ${PROTOCOL}`);
      }
      const recovered = everLive && !msg.resync && msg.epoch === cursor.epoch;
      cursor.hello(msg);
      if (recovered) {
        for (const card of msg.onscreen) hold(card, card.appeared_at_ms);
      } else {
        // What is on screen now, by the same rule as events: a card shows from the frame its
        // product appeared in, so a late joiner whose picture is behind sees it when that comes.
        schedule.clear();
        const now = Date.now();
        const due = [];
        for (const card of msg.onscreen) {
          if (isDue(card.appeared_at_ms)) due.push(card);
          else schedule.hold(card, card.appeared_at_ms, now);
        }
        book.reset(due);
        list.replace(book.cards());
      }
      everLive = true;
      liveSince = Date.now();
      showConn(conn, "live", "live");
      if (msg.viewers !== null) hooks.viewers?.(msg.viewers);
      hooks.hello?.(msg);
    } else if (msg.kind === "event") {
      cursor.event(msg.offset);
      hold(msg.card, msg.card.captured_at_ms);
    } else if (msg.kind === "error") {
      console.warn(`spotter: bridge says: ${msg.message}`);
      hooks.error?.(msg.message);
    } else if (msg.kind === "viewers") {
      hooks.viewers?.(msg.count);
    } else {
      hooks.chat?.(msg);
    }
  }

  /** Whether the frame captured at `at` is on screen (or there is no picture to wait for). */
  function isDue(at) {
    return shown.mode === "none" || reached(at, shown.ms);
  }

  function hold(card, at) {
    if (shown.mode === "none") {
      apply(card);
      return;
    }
    schedule.hold(card, at, Date.now());
    release();
  }

  function release() {
    const due = shown.mode === "none" ? schedule.drain() : schedule.due(shown.ms, Date.now());
    for (const card of due) apply(card);
  }

  function apply(card) {
    const change = book.apply(card);
    if (change?.op === "upsert") list.upsert(change.card, change.added);
    else if (change?.op === "remove") list.remove(change.eventId);
  }

  function connect() {
    retryTimer = null;
    if (stopped) return;
    showConn(conn, "connecting", everLive ? "reconnecting…" : "connecting…");
    const ws = new WebSocket(url + cursor.query());
    socket = ws;
    ws.addEventListener("message", onMessage);
    ws.addEventListener("open", () => {
      pingTimer = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ kind: "ping" }));
      }, PING_EVERY_MS);
      hooks.open?.();
    });
    ws.addEventListener("close", (ev) => {
      if (socket !== ws) return;
      socket = null;
      clearInterval(pingTimer);
      hooks.close?.(ev.code, ev.reason);
      if (stopped) return;
      if (liveSince !== null && Date.now() - liveSince >= STABLE_AFTER_MS) attempt = 0;
      liveSince = null;
      const delay = backoffDelay(attempt++);
      showConn(conn, "offline", `offline, reconnecting in ${Math.ceil(delay / 1000)} s…`);
      retryTimer = setTimeout(connect, delay);
    });
  }

  // Coming back online is a better signal than any timer.
  window.addEventListener("online", () => {
    if (retryTimer !== null) {
      clearTimeout(retryTimer);
      connect();
    }
  });

  connect();
  return {
    /** The capture time of the frame on screen now (`{mode, ms}`, from the player). */
    frame(capture) {
      shown = capture;
      release();
    },
    /** Sends one frame on the socket if it is open; says whether it could. */
    send(frame) {
      if (socket?.readyState !== WebSocket.OPEN) return false;
      socket.send(JSON.stringify(frame));
      return true;
    },
    stop(reason) {
      stopped = true;
      clearTimeout(retryTimer);
      socket?.close(1000);
      showConn(conn, "offline", reason);
    },
  };
}

const countFormat = typeof Intl !== "undefined" ? new Intl.NumberFormat(undefined, { notation: "compact" }) : null;
const formatCount = (n) => (countFormat ? countFormat.format(n) : String(n));

/** sessionStorage, or null where the browser refuses it (some privacy modes throw on access). */
function sessionStorageOrNull() {
  try {
    return window.sessionStorage;
  } catch {
    return null;
  }
}

function chatParts() {
  const id = (name) => document.getElementById(name);
  return {
    root: id("chat"),
    log: id("chat-messages"),
    empty: id("chat-empty"),
    notice: id("chat-notice"),
    who: id("chat-who"),
    form: id("chat-form"),
    input: id("chat-input"),
    counter: id("chat-count"),
    send: id("chat-send"),
    error: id("chat-error"),
    guestForm: id("chat-guest"),
    guestName: id("chat-guest-name"),
    guestError: id("chat-guest-error"),
  };
}

function main() {
  const conn = document.getElementById("conn");
  const where = parseStreamPath(location.pathname);
  if (!where) {
    showConn(conn, "offline", "no stream in this address");
    document.getElementById("placeholder-text").textContent =
      "Open a stream at /watch/<studio>/<stream>.";
    return;
  }
  const { studio, stream } = where;
  document.getElementById("stream-name").textContent = `${studio} / ${stream}`;
  document.title = `${stream} · ${studio} · Spotter live`;

  // The bridge's root, from where this script was served (/static/app.js), so a path prefix works.
  const root = new URL("../", import.meta.url);
  const path = `${encodeURIComponent(studio)}/${encodeURIComponent(stream)}`;
  const wsUrl = new URL(`ws/${path}`, root);
  wsUrl.protocol = wsUrl.protocol === "https:" ? "wss:" : "ws:";

  // A chat token the shop's site put in the link (`#token=...`): kept for this tab, then taken out
  // of the address bar so it is not bookmarked, shared or left in the history.
  const fromLink = takeFragmentToken(location.hash);
  if (fromLink) history.replaceState(history.state, "", location.pathname + location.search + fromLink.hash);

  if (new URLSearchParams(location.search).get("debug") === "1") {
    document.getElementById("sync").hidden = false;
  }

  let socket = null;
  const chat = startChat(chatParts(), (frame) => socket?.send(frame) ?? false, sessionStorageOrNull());
  if (fromLink?.token) chat.setToken(fromLink.token);
  const viewers = document.getElementById("viewers");
  const viewerCount = document.getElementById("viewer-count");
  const cards = connectCards(wsUrl.href, new CardList(document.getElementById("cards")), conn, {
    open: chat.open,
    close: chat.close,
    hello: chat.hello,
    error: chat.error,
    chat: chat.receive,
    viewers: (count) => {
      viewerCount.textContent = formatCount(count);
      viewers.dataset.count = String(count);
      viewers.hidden = false;
    },
  });
  socket = cards;
  startVideo({
    infoUrl: new URL(`api/streams/${path}`, root).href,
    vendorBase: new URL("static/vendor/", root),
    prefer: preferredPlayer(location.search),
    parts: {
      section: document.getElementById("player"),
      video: document.getElementById("video"),
      placeholder: document.getElementById("placeholder"),
      placeholderText: document.getElementById("placeholder-text"),
      syncNote: document.getElementById("sync"),
    },
    onMissing: () => cards.stop("no such stream"),
    onFrame: (capture) => cards.frame(capture),
  });
}

if (typeof document !== "undefined") main();
