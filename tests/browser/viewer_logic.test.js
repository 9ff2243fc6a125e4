// Unit tests of the viewer page's pure logic (cloud-bridge/web/app.js and cards.js) under Node, no browser.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";

import { Cursor, backoffDelay, parseServerMessage, parseStreamPath } from "../../cloud-bridge/web/app.js";
import { CardBook, formatPrice, safeUrl } from "../../cloud-bridge/web/cards.js";
import { ROOT } from "./support.js";

const GOLDEN = readFileSync(path.join(ROOT, "protocol", "tests", "golden", "viewer_event.json"), "utf8").trim();

function card(type, eventId, seq, sku = "MUG-001") {
  return {
    type,
    event_id: eventId,
    seq,
    score: 0.9,
    captured_at_ms: 1000 + seq,
    product: { sku, name: "Mug", price: "14.00", currency: "USD", url: "https://shop.example/m", image: null },
  };
}

describe("parseStreamPath", () => {
  test("reads studio and stream, with or without a prefix or trailing slash", () => {
    assert.deepEqual(parseStreamPath("/watch/demo/main"), { studio: "demo", stream: "main" });
    assert.deepEqual(parseStreamPath("/watch/demo/main/"), { studio: "demo", stream: "main" });
    assert.deepEqual(parseStreamPath("/shop/live/watch/demo/main"), { studio: "demo", stream: "main" });
    assert.deepEqual(parseStreamPath("/watch/a%20b/watch"), { studio: "a b", stream: "watch" });
  });

  test("refuses anything else", () => {
    for (const p of ["/", "/watch", "/watch/demo", "/view/demo/main", "/watch/%E0%A4%A/x"]) {
      assert.equal(parseStreamPath(p), null, p);
    }
  });
});

describe("backoffDelay", () => {
  test("grows, is jittered within half to full of its ceiling, and is capped", () => {
    assert.equal(backoffDelay(0, () => 0), 250);
    assert.equal(backoffDelay(0, () => 1), 500);
    assert.equal(backoffDelay(3, () => 0), 2_000);
    assert.equal(backoffDelay(3, () => 1), 4_000);
    for (const attempt of [6, 10, 100, 10_000]) {
      assert.equal(backoffDelay(attempt, () => 1), 20_000, `attempt ${attempt}`);
      assert.equal(backoffDelay(attempt, () => 0), 10_000, `attempt ${attempt}`);
    }
    assert.equal(backoffDelay(-1, () => 1), 500);
  });
});

describe("parseServerMessage", () => {
  test("reads the golden event", () => {
    const msg = parseServerMessage(GOLDEN);
    assert.equal(msg.kind, "event");
    assert.equal(msg.offset, 9, "an event's offset is its seq");
    assert.equal(msg.card.type, "new");
    assert.equal(msg.card.event_id, "e-1");
    assert.equal(msg.card.seq, 9);
    assert.deepEqual(msg.card.product, {
      sku: "MUG-001",
      name: "Enamel camp mug",
      price: "14.00",
      currency: "USD",
      url: "https://shop.example/mug-001",
      image: "/img/0123abcd/mug-front.png",
    });
  });

  test("reads hello and keeps only valid on-screen cards", () => {
    const golden = JSON.parse(GOLDEN).card;
    const msg = parseServerMessage(
      JSON.stringify({
        kind: "hello",
        protocol: 1,
        epoch: "ep",
        offset: 7,
        resync: true,
        onscreen: [golden, { ...golden, seq: "x" }, { ...golden, type: "end" }, null],
      }),
    );
    assert.equal(msg.kind, "hello");
    assert.equal(msg.resync, true);
    assert.equal(msg.offset, 7);
    assert.equal(msg.onscreen.length, 1);
  });

  test("reads the viewer count and the chat's offer in hello, and the viewers message", () => {
    const hello = { kind: "hello", protocol: 1, epoch: "ep", offset: 0, onscreen: [] };
    assert.deepEqual(
      [parseServerMessage(JSON.stringify({ ...hello, viewers: 12, chat: { guests: true } }))].map((m) => [m.viewers, m.chat]),
      [[12, { guests: true }]],
    );
    const old = parseServerMessage(JSON.stringify(hello));
    assert.equal(old.viewers, null, "a bridge without the count");
    assert.equal(old.chat, null, "a bridge without chat");
    assert.deepEqual(parseServerMessage('{"kind":"viewers","count":3}'), { kind: "viewers", count: 3 });
    assert.equal(parseServerMessage('{"kind":"viewers","count":-1}'), null);
  });

  test("hands the chat kinds over to the chat's parser", () => {
    const msg = parseServerMessage(
      JSON.stringify({ kind: "chat", message: { id: "m1", user: { id: "u1", name: "Al" }, text: "hi", at_ms: 5 } }),
    );
    assert.equal(msg.kind, "chat");
    assert.equal(msg.message.text, "hi");
    assert.equal(parseServerMessage('{"kind":"chat_deleted","id":"m1"}').id, "m1");
    assert.equal(parseServerMessage('{"kind":"chat_deleted"}'), null);
  });

  test("ignores what it does not understand", () => {
    const golden = JSON.parse(GOLDEN);
    for (const text of [
      "",
      "not json",
      "null",
      "[]",
      '{"kind":"chat"}',
      JSON.stringify({ ...golden, offset: -1 }),
      JSON.stringify({ ...golden, card: { ...golden.card, type: "gone" } }),
      JSON.stringify({ ...golden, card: { ...golden.card, event_id: "" } }),
      JSON.stringify({ ...golden, card: { ...golden.card, product: { sku: "X" } } }),
      JSON.stringify({ kind: "hello", epoch: 1, offset: 0, onscreen: [] }),
    ]) {
      assert.equal(parseServerMessage(text), null, text);
    }
    assert.equal(parseServerMessage(undefined), null);
  });
});

describe("CardBook", () => {
  test("adds on new, updates in place, removes on end", () => {
    const book = new CardBook();
    assert.deepEqual(book.apply(card("new", "a", 1)), { op: "upsert", card: card("new", "a", 1), added: true });
    assert.equal(book.apply(card("update", "a", 2)).added, false);
    assert.equal(book.size, 1);
    assert.deepEqual(book.apply(card("end", "a", 3)), { op: "remove", eventId: "a" });
    assert.equal(book.size, 0);
  });

  test("ignores duplicate and stale (event_id, seq) pairs", () => {
    const book = new CardBook();
    book.apply(card("new", "a", 5));
    assert.equal(book.apply(card("new", "a", 5)), null, "duplicate");
    book.apply(card("end", "a", 6));
    assert.equal(book.apply(card("new", "a", 5)), null, "a redelivered new after end");
    assert.equal(book.apply(card("update", "a", 6)), null);
    assert.equal(book.size, 0);
    assert.equal(book.apply(card("end", "b", 1)), null, "end of something never shown");
  });

  test("reset replaces the cards with a snapshot and keeps the seq memory", () => {
    const book = new CardBook();
    book.apply(card("new", "a", 1));
    book.apply(card("new", "b", 2));
    assert.deepEqual(book.reset([card("new", "b", 2), card("update", "c", 4)]), ["a"]);
    assert.deepEqual(
      book.cards().map((c) => c.event_id),
      ["c", "b"],
      "newest capture first",
    );
    assert.equal(book.apply(card("update", "c", 4)), null);
    assert.equal(book.apply(card("update", "c", 5)).op, "upsert");
  });

  test("forgets old seqs beyond its memory, but never those of cards on screen", () => {
    const book = new CardBook(3);
    book.apply(card("new", "keep", 1));
    for (let i = 0; i < 10; i++) {
      book.apply(card("new", `x${i}`, 10 + 2 * i));
      book.apply(card("end", `x${i}`, 11 + 2 * i));
    }
    assert.equal(book.apply(card("new", "keep", 1)), null);
    assert.equal(book.size, 1);
  });
});

describe("Cursor", () => {
  test("asks for the event after the last one seen, in the hello's epoch", () => {
    const cursor = new Cursor();
    assert.equal(cursor.query(), "");
    cursor.hello({ epoch: "e p", offset: 10 });
    assert.equal(cursor.query(), "?epoch=e%20p&offset=10");
    cursor.event(10);
    cursor.event(11);
    cursor.event(5); // a replayed older one does not move it back
    assert.equal(cursor.query(), "?epoch=e%20p&offset=12");
    cursor.hello({ epoch: "f", offset: 0 });
    assert.equal(cursor.query(), "?epoch=f&offset=0");
  });
});

describe("formatPrice", () => {
  test("formats the decimal string in the currency", () => {
    assert.equal(formatPrice("14.00", "USD", "en-US"), "$14.00");
    assert.equal(formatPrice("1234.5", "EUR", "de-DE"), "1.234,50\u00a0€");
    assert.equal(formatPrice("1000", "JPY", "en-US"), "¥1,000");
    // A string is exact: a float would print 0.30000000000000004-style noise or round.
    assert.equal(formatPrice("12345678901234567.99", "USD", "en-US"), "$12,345,678,901,234,567.99");
  });

  test("falls back to the raw text for what it cannot format", () => {
    assert.equal(formatPrice("14.00", "NOPE", "en-US"), "14.00 NOPE");
    assert.equal(formatPrice("about 3", "USD", "en-US"), "about 3 USD");
  });
});

describe("safeUrl", () => {
  test("keeps http(s) and resolves relative paths", () => {
    assert.equal(safeUrl("https://shop.example/m", "http://h/watch/a/b"), "https://shop.example/m");
    assert.equal(safeUrl("/img/ab/m.png", "http://h/watch/a/b"), "http://h/img/ab/m.png");
  });

  test("refuses other schemes", () => {
    for (const raw of ["javascript:alert(1)", " JavaScript:alert(1)", "data:text/html,x", "vbscript:x"]) {
      assert.equal(safeUrl(raw, "http://h/"), null, raw);
    }
  });
});
