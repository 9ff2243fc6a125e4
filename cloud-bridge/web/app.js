// Spotter viewer page: plays the stream's video and keeps the product cards in step with the bridge's WebSocket.
//
// The top half is pure logic (parsing, card bookkeeping, recovery cursor, backoff) with no DOM or
// sockets, exported so it can be tested under Node; the bottom half wires it to the page. Nothing
// received from the network is ever parsed as HTML: text goes in through textContent, and links
// and image sources go through safeUrl so a catalog entry cannot smuggle in a javascript: URL.

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

/**
 * Delay before reconnect attempt `attempt` (0-based): exponential, capped, with "equal jitter"
 * (half fixed, half random) so a bridge restart is not met by every viewer at the same instant,
 * and no viewer retries in a tight loop.
 */
export function backoffDelay(attempt, random = Math.random, baseMs = 500, capMs = 20_000) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(Math.max(attempt, 0), 20));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
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
      };
    case "event": {
      const card = parseCard(msg.card);
      return isCount(msg.offset) && card ? { kind: "event", offset: msg.offset, card } : null;
    }
    case "error":
      return { kind: "error", message: String(msg.message ?? "") };
    default:
      return null;
  }
}

/**
 * Where this page is in the hub's history, for `?epoch=&offset=` on reconnect. `offset` is the
 * offset of the next event wanted, the same meaning as `hello.offset`.
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

/**
 * The cards on screen, keyed by event id, and the highest seq seen per event id. An event whose
 * seq is not above the highest seen for its id is a redelivery (or older than what is shown) and
 * changes nothing; that also keeps a late `new` from resurrecting an ended card.
 */
export class CardBook {
  #cards = new Map();
  #lastSeq = new Map();
  #memory;

  constructor(memory = 4096) {
    this.#memory = memory;
  }

  get size() {
    return this.#cards.size;
  }

  has(eventId) {
    return this.#cards.has(eventId);
  }

  /** Current cards, newest capture first. */
  cards() {
    return [...this.#cards.values()].sort((a, b) => b.captured_at_ms - a.captured_at_ms);
  }

  /** Replaces everything with a snapshot (first hello, or resync). Returns the ids dropped. */
  reset(onscreen) {
    const before = new Set(this.#cards.keys());
    this.#cards.clear();
    for (const card of onscreen) {
      this.#cards.set(card.event_id, card);
      this.#remember(card.event_id, Math.max(card.seq, this.#lastSeq.get(card.event_id) ?? 0));
      before.delete(card.event_id);
    }
    return [...before];
  }

  /**
   * Applies one card. Returns `{op: "upsert", card, added}`, `{op: "remove", eventId}`, or null
   * when nothing changes.
   */
  apply(card) {
    const last = this.#lastSeq.get(card.event_id);
    if (last !== undefined && card.seq <= last) return null;
    this.#remember(card.event_id, card.seq);
    if (card.type === "end") {
      return this.#cards.delete(card.event_id) ? { op: "remove", eventId: card.event_id } : null;
    }
    const added = !this.#cards.has(card.event_id);
    this.#cards.set(card.event_id, card);
    return { op: "upsert", card, added };
  }

  #remember(eventId, seq) {
    this.#lastSeq.delete(eventId); // re-insert to keep the map in least-recently-seen order
    this.#lastSeq.set(eventId, seq);
    if (this.#lastSeq.size <= this.#memory) return;
    for (const id of this.#lastSeq.keys()) {
      if (!this.#cards.has(id)) {
        this.#lastSeq.delete(id);
        break;
      }
    }
  }
}

const DECIMAL = /^-?\d+(\.\d+)?$/;
const formatters = new Map();

/** Formats a catalog price (a decimal string, never a float) in the viewer's locale. */
export function formatPrice(price, currency, locales = undefined) {
  if (!DECIMAL.test(price)) return currency ? `${price} ${currency}` : price;
  const key = `${locales ?? ""}|${currency}`;
  try {
    let fmt = formatters.get(key);
    if (!fmt) {
      fmt = new Intl.NumberFormat(locales, { style: "currency", currency });
      formatters.set(key, fmt);
    }
    // A string argument is formatted as an exact decimal (Intl.NumberFormat v3), no float rounding.
    return fmt.format(price);
  } catch {
    return `${price} ${currency}`; // unknown currency code
  }
}

/** Resolves `raw` against `base` and returns it only if it is an http(s) URL. */
export function safeUrl(raw, base) {
  try {
    const url = new URL(raw, base);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// The page.

const PING_EVERY_MS = 25_000;
// A connection that stayed up this long resets the backoff; one that drops sooner keeps growing it,
// so a bridge that accepts and at once closes is not hammered.
const STABLE_AFTER_MS = 10_000;
const VIDEO_POLL_MS = 15_000;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** What each card element shows now, to skip rebuilding it when an update changes nothing visible. */
const shownProduct = new WeakMap();

/** Builds the card's contents (the `<li>` itself is kept across updates). */
function fillCard(li, card) {
  const { product } = card;
  li.dataset.sku = product.sku;
  li.dataset.eventId = card.event_id;
  const key = JSON.stringify(product);
  if (shownProduct.get(li) === key) return; // unchanged: keep the image and do not re-announce
  shownProduct.set(li, key);

  const image = product.image ? safeUrl(product.image, document.baseURI) : null;
  let media;
  if (image) {
    media = el("img", "card-image");
    media.src = image;
    media.alt = ""; // the name is right beside it
    media.width = 72;
    media.height = 72;
    media.decoding = "async";
  } else {
    media = el("div", "card-image card-image--none", product.name.trim().charAt(0).toUpperCase());
    media.setAttribute("aria-hidden", "true");
  }

  const body = el("div", "card-body");
  body.append(
    el("h3", "card-name", product.name || product.sku),
    el("p", "card-price", formatPrice(product.price, product.currency)),
  );

  const href = safeUrl(product.url, document.baseURI);
  let shop;
  if (href) {
    shop = el("a", "card-shop", "Shop");
    shop.href = href;
    shop.target = "_blank";
    shop.rel = "noopener";
    shop.append(el("span", "visually-hidden", ` ${product.name} (opens in a new tab)`));
  } else {
    shop = el("span", "card-shop card-shop--disabled", "Shop");
    shop.setAttribute("aria-disabled", "true");
  }

  li.replaceChildren(media, body, shop);
}

class CardList {
  constructor(root) {
    this.root = root;
    this.items = new Map();
  }

  upsert(card, added) {
    let li = this.items.get(card.event_id);
    if (!li) {
      li = el("li", "card");
      this.items.set(card.event_id, li);
      fillCard(li, card);
      if (added) this.root.prepend(li);
      else this.root.append(li);
      return;
    }
    fillCard(li, card);
  }

  remove(eventId) {
    this.items.get(eventId)?.remove();
    this.items.delete(eventId);
  }

  /** Shows exactly `cards`, in order, reusing elements that stay. */
  replace(cards) {
    const keep = new Set(cards.map((c) => c.event_id));
    for (const id of [...this.items.keys()]) if (!keep.has(id)) this.remove(id);
    cards.forEach((card, i) => {
      let li = this.items.get(card.event_id);
      if (!li) {
        li = el("li", "card");
        this.items.set(card.event_id, li);
      }
      fillCard(li, card);
      // Move only what is out of place: a moved element replays its entrance and is re-announced.
      const at = this.root.children[i] ?? null;
      if (at !== li) this.root.insertBefore(li, at);
    });
  }
}

function showConn(node, state, text) {
  node.dataset.state = state;
  node.textContent = text;
}

/** Keeps one WebSocket to the stream's hub open, recovering from where it left off. */
function connectCards(url, list, conn) {
  const book = new CardBook();
  const cursor = new Cursor();
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
        for (const card of msg.onscreen) apply(card);
      } else {
        book.reset(msg.onscreen);
        list.replace(book.cards());
      }
      everLive = true;
      liveSince = Date.now();
      showConn(conn, "live", "live");
    } else if (msg.kind === "event") {
      cursor.event(msg.offset);
      apply(msg.card);
    } else if (msg.kind === "error") {
      console.warn(`spotter: bridge says: ${msg.message}`);
    }
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
    });
    ws.addEventListener("close", () => {
      if (socket !== ws) return;
      socket = null;
      clearInterval(pingTimer);
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
    stop(reason) {
      stopped = true;
      clearTimeout(retryTimer);
      socket?.close(1000);
      showConn(conn, "offline", reason);
    },
  };
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = el("script");
    script.src = src;
    script.async = true;
    script.addEventListener("load", resolve, { once: true });
    script.addEventListener("error", () => reject(new Error(`could not load ${src}`)), { once: true });
    document.head.append(script);
  });
}

/** Asks the bridge for the stream's video and plays it; keeps asking while there is none. */
function startVideo(infoUrl, hlsSrc, parts, onMissing) {
  const { video, placeholder, placeholderText } = parts;
  let attempt = 0;
  let hls = null;

  function waiting(text, delay) {
    video.hidden = true;
    placeholder.hidden = false;
    placeholderText.textContent = text;
    setTimeout(check, delay);
  }

  async function check() {
    let info;
    try {
      const res = await fetch(infoUrl, { headers: { accept: "application/json" } });
      if (res.status === 404) {
        onMissing();
        placeholder.hidden = false;
        placeholderText.textContent = "There is no such stream.";
        return;
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      info = await res.json();
    } catch (err) {
      console.warn(`spotter: stream info: ${err.message}`);
      waiting("waiting for video…", backoffDelay(attempt++));
      return;
    }
    attempt = 0;
    const src = typeof info?.video_url === "string" ? safeUrl(info.video_url, document.baseURI) : null;
    if (!src) {
      waiting("waiting for video…", VIDEO_POLL_MS + Math.random() * 5_000);
      return;
    }
    play(src);
  }

  async function play(src) {
    video.muted = true; // browsers only autoplay muted video
    try {
      if (!window.Hls) await loadScript(hlsSrc);
    } catch (err) {
      console.warn(`spotter: ${err.message}`);
    }
    const Hls = window.Hls;
    if (Hls?.isSupported()) {
      hls = new Hls({ lowLatencyMode: true, backBufferLength: 30 });
      hls.on(Hls.Events.MANIFEST_PARSED, () => {
        video.play().catch(() => {}); // autoplay may still be refused; the controls remain
      });
      hls.on(Hls.Events.ERROR, (_event, data) => {
        if (!data.fatal) return;
        if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
          hls.recoverMediaError();
          return;
        }
        console.warn(`spotter: video: ${data.details}`);
        hls.destroy();
        hls = null;
        waiting("video interrupted, retrying…", backoffDelay(attempt++));
      });
      hls.loadSource(src);
      hls.attachMedia(video);
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = src; // Safari and others with native HLS
      video.addEventListener(
        "error",
        () => waiting("video interrupted, retrying…", backoffDelay(attempt++)),
        { once: true },
      );
    } else {
      placeholderText.textContent = "This browser cannot play the live video.";
      return;
    }
    placeholder.hidden = true;
    video.hidden = false;
  }

  check();
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

  const cards = connectCards(wsUrl.href, new CardList(document.getElementById("cards")), conn);
  startVideo(
    new URL(`api/streams/${path}`, root).href,
    new URL("static/vendor/hls.min.js", root).href,
    {
      video: document.getElementById("video"),
      placeholder: document.getElementById("placeholder"),
      placeholderText: document.getElementById("placeholder-text"),
    },
    () => cards.stop("no such stream"),
  );
}

if (typeof document !== "undefined") main();
