// Unit tests of the viewer page's card timing (cloud-bridge/web/sync.js) under Node: capture stamps,
// the capture time of the frame on screen, and the schedule that holds cards until their frame.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  CardSchedule,
  MAX_HOLD_MS,
  STAMP_UUID,
  StampTrack,
  TOLERANCE_MS,
  decodeStamp,
  displayedCapture,
  isStampUuid,
} from "../../cloud-bridge/web/sync.js";

/** A stamp's data as the agent writes it: version 1, then big-endian UTC ms. */
function stamp(ms) {
  const bytes = new Uint8Array(9);
  bytes[0] = 1;
  new DataView(bytes.buffer).setBigUint64(1, BigInt(ms));
  return bytes;
}

describe("capture stamps", () => {
  test("decode the agent's layout and refuse anything else", () => {
    assert.equal(decodeStamp(stamp(1_765_000_000_123)), 1_765_000_000_123);
    const shifted = new Uint8Array(12);
    shifted.set(stamp(42), 3);
    assert.equal(decodeStamp(shifted.subarray(3)), 42, "a view into a larger buffer");
    assert.equal(decodeStamp(new Uint8Array(8)), null, "too short");
    const v2 = stamp(42);
    v2[0] = 2;
    assert.equal(decodeStamp(v2), null, "a version this page does not speak");
    assert.equal(decodeStamp("not bytes"), null);
    assert.equal(decodeStamp(stamp(0)), null);
  });

  test("know Spotter's UUID however a player prints it", () => {
    assert.ok(isStampUuid(STAMP_UUID));
    assert.ok(isStampUuid(STAMP_UUID.toUpperCase()));
    assert.ok(isStampUuid(STAMP_UUID.replaceAll("-", "")));
    // x264 writes its settings in a user-data SEI of its own
    assert.ok(!isStampUuid("dc45e9bd-e6d9-48b7-962c-d820d923eeef"));
    assert.ok(!isStampUuid(undefined));
  });
});

describe("the capture time of the frame on screen", () => {
  const frame = 1 / 30;
  const base = 1_765_000_000_000;
  function track(frames, start = 10) {
    const t = new StampTrack();
    for (let i = 0; i < frames; i++) t.add(start + i * frame, base + Math.round((i * 1000) / 30));
    return t;
  }

  test("is the frame's own stamp, or the last one moved on by media time", () => {
    const t = track(60);
    assert.equal(t.captureAt(10), base);
    assert.equal(t.captureAt(10 + 30 * frame), base + 1000);
    // a player's media time a hair before the frame's own stamp is still that frame
    assert.equal(t.captureAt(10 + 30 * frame - 0.0005), base + 1000);
    // between two stamps: extrapolated from the earlier
    assert.ok(Math.abs(t.captureAt(10 + 0.5 * frame) - (base + 1000 / 60)) < 0.01);
    assert.equal(t.captureAt(9), null, "before any stamp");
  });

  test("is unknown after a long gap in the stamps", () => {
    const t = track(30);
    assert.notEqual(t.captureAt(10 + 4), null);
    assert.equal(t.captureAt(10 + 6), null);
  });

  test("keeps stamps sorted when a segment is parsed again or out of order", () => {
    const t = new StampTrack();
    t.add(2, 2000);
    t.add(1, 1000);
    t.add(3, 3000);
    t.add(2, 2000); // the same frame again
    assert.equal(t.size, 3);
    assert.equal(t.captureAt(1.5), 1500);
    assert.equal(t.captureAt(2.5), 2500);
    t.clear();
    assert.equal(t.captureAt(2.5), null);
  });

  test("stays bounded", () => {
    const t = track(10_000);
    assert.ok(t.size <= 3000, `${t.size}`);
    assert.notEqual(t.captureAt(10 + 9_999 * frame), null, "the newest are kept");
  });

  test("says where it comes from: stamps, the player's latency, a player starting, or no video", () => {
    const stamps = track(30);
    const now = base + 10_000;
    const at = (mediaTime, latencyMs, video = "playing", paused = false) =>
      displayedCapture({ stamps, mediaTime, latencyMs, now, video, paused });
    assert.deepEqual(at(10, 3000), { mode: "stamp", ms: base });
    assert.deepEqual(at(100, 3000), { mode: "latency", ms: now - 3000 });
    // IVS's player says 0 for a stream not from IVS: no hold at all
    assert.deepEqual(at(100, 0), { mode: "latency", ms: now });
    assert.deepEqual(at(10, 3000, "loading"), { mode: "waiting", ms: null });
    assert.deepEqual(at(10, 3000, "playing", true), { mode: "waiting", ms: null }, "paused");
    assert.deepEqual(at(10, 3000, "none"), { mode: "none", ms: null });
  });
});

describe("the card schedule", () => {
  const card = (id, type, at) => ({ event_id: id, type, captured_at_ms: at });

  test("holds each card until its frame is on screen, never before", () => {
    const s = new CardSchedule();
    s.hold(card("a", "new", 1000), 1000, 0);
    assert.deepEqual(s.due(1000 - TOLERANCE_MS - 1, 10), [], "a frame too early");
    assert.deepEqual(s.due(null, 10), [], "no frame known");
    assert.deepEqual(s.due(1000 - TOLERANCE_MS, 10).map((c) => c.event_id), ["a"]);
    assert.equal(s.size, 0);
  });

  test("releases in capture order, whatever the arrival order", () => {
    const s = new CardSchedule();
    s.hold(card("b", "new", 2000), 2000, 0);
    s.hold(card("a", "new", 1000), 1000, 0);
    s.hold(card("a", "end", 3000), 3000, 0);
    s.hold(card("c", "new", 2000), 2000, 0); // same time as b: after it, as it came after
    assert.deepEqual(
      s.due(2500, 0).map((c) => `${c.event_id}:${c.type}`),
      ["a:new", "b:new", "c:new"],
    );
    assert.deepEqual(s.due(3000, 0).map((c) => `${c.event_id}:${c.type}`), ["a:end"]);
  });

  test("lets a card go after the longest hold, with everything before it", () => {
    const s = new CardSchedule();
    s.hold(card("a", "new", 1000), 1000, 0);
    s.hold(card("b", "new", 5000), 5000, 5);
    assert.deepEqual(s.due(null, MAX_HOLD_MS - 1), []);
    assert.deepEqual(s.due(null, MAX_HOLD_MS).map((c) => c.event_id), ["a"]);
    assert.deepEqual(s.due(null, MAX_HOLD_MS + 5).map((c) => c.event_id), ["b"]);
  });

  test("drains in order and clears", () => {
    const s = new CardSchedule();
    s.hold(card("b", "new", 2000), 2000, 0);
    s.hold(card("a", "new", 1000), 1000, 0);
    assert.deepEqual(s.drain().map((c) => c.event_id), ["a", "b"]);
    s.hold(card("c", "new", 1), 1, 0);
    s.clear();
    assert.equal(s.size, 0);
    assert.deepEqual(s.due(10_000, 0), []);
  });
});
