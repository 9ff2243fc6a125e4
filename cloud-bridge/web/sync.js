// Spotter viewer page: what keeps the cards in step with the picture. Pure logic, no DOM: the capture
// stamps the agent writes into the video, the capture time of the frame on screen, and the
// schedule that holds each card until its frame is displayed.
//
// Product events reach the page over the WebSocket as soon as the agent publishes them, seconds
// before the frame they were recognised in is on the viewer's screen (the player buffers a few
// seconds of HLS). Every uploaded frame carries its capture time in an H.264 SEI message
// (user_data_unregistered, Spotter's UUID); the player hands those to the page with the frame's
// media time, and the page shows a card when the displayed frame's capture time reaches the
// event's `captured_at_ms`.

/** The UUID of Spotter's capture stamps (ASCII "spotter capture!"), as players print UUIDs. */
export const STAMP_UUID = "73706f74-7465-7220-6361-707475726521";

/** A frame's capture time is "reached" this close before it (half a frame at 30 fps). */
export const TOLERANCE_MS = 16;

/** Longest a card is held for a frame that does not come (a player stalled, or far behind). */
export const MAX_HOLD_MS = 30_000;

/** Without a stamp for this long (media time), the stamps no longer describe the picture. */
export const STAMP_GAP_S = 5;

/** Stamps kept: a minute and a half of 30 fps video, enough for any player's buffer. */
const MAX_STAMPS = 2700;

/**
 * Decodes a stamp's data (what follows the UUID): version 1, then the capture time as a big-endian
 * 64-bit count of UTC milliseconds. Returns the milliseconds, or null for anything else.
 */
export function decodeStamp(bytes) {
  if (!(bytes instanceof Uint8Array) || bytes.length < 9 || bytes[0] !== 1) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const ms = Number(view.getBigUint64(1));
  return Number.isSafeInteger(ms) && ms > 0 ? ms : null;
}

/** Whether a UUID as a player reports it (any case, with or without dashes) is Spotter's. */
export function isStampUuid(uuid) {
  return typeof uuid === "string" && uuid.replaceAll("-", "").toLowerCase() === STAMP_UUID.replaceAll("-", "");
}

/**
 * The capture stamps seen in the stream, by media time (seconds, the player's timeline: what
 * `video.currentTime` and `requestVideoFrameCallback`'s `mediaTime` say). Players parse stamps
 * ahead of playback (a segment at a time), so the list runs ahead of the picture.
 */
export class StampTrack {
  #pts = [];
  #ms = [];

  get size() {
    return this.#pts.length;
  }

  /** Records that the frame at media time `pts` was captured at `ms`. */
  add(pts, ms) {
    if (!Number.isFinite(pts) || !Number.isFinite(ms)) return;
    const n = this.#pts.length;
    if (n === 0 || pts > this.#pts[n - 1]) {
      this.#pts.push(pts);
      this.#ms.push(ms);
    } else {
      // A segment parsed again, or out of order: keep the list sorted and without duplicates.
      const i = this.#search(pts);
      if (i < n && Math.abs(this.#pts[i] - pts) < 1e-4) {
        this.#ms[i] = ms;
      } else {
        this.#pts.splice(i, 0, pts);
        this.#ms.splice(i, 0, ms);
      }
    }
    if (this.#pts.length > MAX_STAMPS) {
      const drop = this.#pts.length - MAX_STAMPS;
      this.#pts.splice(0, drop);
      this.#ms.splice(0, drop);
    }
  }

  /** Forgets every stamp (a new source was loaded: its media times mean something else). */
  clear() {
    this.#pts = [];
    this.#ms = [];
  }

  /**
   * The capture time of the frame at media time `t`: the latest stamp at or before it, moved on
   * by the media time since. Null when no stamp is that close (none yet, or a gap in them).
   */
  captureAt(t) {
    if (!Number.isFinite(t)) return null;
    // A frame's media time can read a hair before its own stamp's (players round differently).
    const i = this.#search(t + 1e-3) - 1;
    if (i < 0) return null;
    const since = t - this.#pts[i];
    if (since > STAMP_GAP_S) return null;
    return this.#ms[i] + Math.max(0, since) * 1000;
  }

  /** Index of the first stamp at or after `pts`. */
  #search(pts) {
    let lo = 0;
    let hi = this.#pts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#pts[mid] < pts) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/**
 * Whether the frame captured at `at` is on screen when the displayed frame's capture time is
 * `displayed` (null: no frame's is known), within `TOLERANCE_MS`.
 */
export function reached(at, displayed) {
  return displayed !== null && displayed !== undefined && at <= displayed + TOLERANCE_MS;
}

/**
 * Cards waiting for their frame: each is held until the capture time of the frame on screen
 * reaches `at` (its `captured_at_ms`, or a snapshot card's `appeared_at_ms`), then released in
 * capture-time order (arrival order among equal times), so an appearance's `new`, `update` and
 * `end` apply in the order they happened.
 */
export class CardSchedule {
  #held = [];
  #arrivals = 0;

  get size() {
    return this.#held.length;
  }

  /** Holds `card` until the frame captured at `at` is displayed; `now` is the wall clock. */
  hold(card, at, now) {
    const entry = { card, at, since: now, order: this.#arrivals++ };
    let i = this.#held.length;
    while (i > 0 && this.#held[i - 1].at > at) i--;
    this.#held.splice(i, 0, entry);
  }

  /**
   * The cards whose frame is on screen now (`displayed`: the frame's capture time, or null when
   * no frame's is known), in order; a card held longer than `MAX_HOLD_MS` of wall clock goes too,
   * with every card before it.
   */
  due(displayed, now) {
    let n = 0;
    while (n < this.#held.length && reached(this.#held[n].at, displayed)) n++;
    let last = -1;
    this.#held.forEach((e, i) => {
      if (now - e.since >= MAX_HOLD_MS) last = i;
    });
    n = Math.max(n, last + 1);
    return this.#held.splice(0, n).map((e) => e.card);
  }

  /** Everything held, in order, emptying the schedule (no video to wait for any more). */
  drain() {
    return this.#held.splice(0).map((e) => e.card);
  }

  /** Drops everything held (a resync: the snapshot that follows replaces it). */
  clear() {
    this.#held = [];
  }
}

/**
 * Where the capture time of the frame on screen comes from: `stamp` (the stamps in the video),
 * `latency` (no stamps: the wall clock less the player's live latency, approximate: it leaves out
 * the encoder's and the agent's own delay), `waiting` (a player is starting, or the picture is
 * paused: cards wait, up to `MAX_HOLD_MS`) or `none` (no video for this stream, or no player can
 * play it: cards show as they come). `video` is `none`, `loading` or `playing`.
 */
export function displayedCapture({ stamps, mediaTime, latencyMs, now, video, paused }) {
  if (video === "none") return { mode: "none", ms: null };
  if (video !== "playing" || paused) return { mode: "waiting", ms: null };
  const stamped = stamps.captureAt(mediaTime);
  if (stamped !== null) return { mode: "stamp", ms: stamped };
  // A player that knows no latency (0: IVS's player on a stream not from IVS) gets cards at once.
  return { mode: "latency", ms: now - (Number.isFinite(latencyMs) && latencyMs > 0 ? latencyMs : 0) };
}
