// Spotter viewer page: the product cards: which cards are on screen (CardBook, pure) and their elements (CardList).
//
// CardBook, formatPrice and safeUrl touch no DOM and are tested under Node; CardList and fillCard
// build the elements. Nothing received from the network is parsed as HTML: text goes in through
// textContent, and links and image sources go through safeUrl so a catalog entry cannot smuggle
// in a javascript: URL.

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

/** One element with a class and text (never HTML). */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** What each card element shows now, to skip rebuilding it when an update changes nothing visible. */
const shownProduct = new WeakMap();

/** Builds the card's contents (the `<li>` itself is kept across updates). */
export function fillCard(li, card) {
  const { product } = card;
  li.dataset.sku = product.sku;
  li.dataset.eventId = card.event_id;
  const key = JSON.stringify(product);
  if (shownProduct.get(li) === key) return; // unchanged: keep the image and do not re-announce
  shownProduct.set(li, key);
  const name = product.name || product.sku;

  // The photo sits whole on a light tile (object-fit: contain): a product shot is never cropped.
  const tile = el("div", "card-tile");
  const image = product.image ? safeUrl(product.image, document.baseURI) : null;
  if (image) {
    const img = el("img", "card-image");
    img.src = image;
    img.alt = ""; // the name is right beside it
    img.width = 96;
    img.height = 96;
    img.decoding = "async";
    tile.append(img);
  } else {
    tile.classList.add("card-tile--none");
    tile.textContent = name.trim().charAt(0).toUpperCase();
    tile.setAttribute("aria-hidden", "true");
  }

  const body = el("div", "card-body");
  body.append(el("h3", "card-name", name), el("p", "card-price", formatPrice(product.price, product.currency)));

  const href = safeUrl(product.url, document.baseURI);
  let shop;
  if (href) {
    shop = el("a", "card-shop", "Shop");
    shop.href = href;
    shop.target = "_blank";
    shop.rel = "noopener";
    shop.append(el("span", "visually-hidden", ` ${name} (opens in a new tab)`));
  } else {
    shop = el("span", "card-shop card-shop--disabled", "Shop");
    shop.setAttribute("aria-disabled", "true");
  }
  body.append(shop);

  li.replaceChildren(tile, body);
}

/** The `<ul id="cards">`: one `<li class="card">` per card, newest first. */
export class CardList {
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
