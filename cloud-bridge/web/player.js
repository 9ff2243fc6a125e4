// Spotter viewer page: plays the stream with the Amazon IVS player (hls.js where it cannot, the
// browser's own HLS where neither runs) and reports, for each frame on screen, its capture time.
//
// Both players hand the page the SEI messages of the H.264 stream with their media time: the IVS
// player as `MetadataEventType.SEI` events ({uuid, timestamp, data}), hls.js as the samples of
// `FRAG_PARSING_USERDATA` ({uuid, pts, userDataBytes}). The page keeps Spotter's capture stamps and,
// on every displayed frame (`requestVideoFrameCallback`), looks up the frame's capture time.
// Third-party code is served by the bridge from `web.vendor_dir` (built by `npm run build` in
// cloud-bridge/web from the lockfile): the IVS player bundle, its wasm worker and binary, hls.js.

import { safeUrl } from "./cards.js";
import { StampTrack, decodeStamp, displayedCapture, isStampUuid } from "./sync.js";

/** How often the page reports when no frame is being displayed (paused, stalled, no video). */
const IDLE_TICK_MS = 250;
/** How long to wait for stream info again while the stream has no video. */
const VIDEO_POLL_MS = 15_000;

/** Which player to try first: `?player=hls` (or `native`) in the page's address forces one. */
export function preferredPlayer(search) {
  const asked = new URLSearchParams(search).get("player");
  return asked === "hls" || asked === "native" || asked === "ivs" ? asked : "ivs";
}

/**
 * Delay before retry `attempt` (0-based): exponential, capped, half of it random, so that a
 * bridge restart is not met by every viewer at the same instant.
 */
export function backoffDelay(attempt, random = Math.random, baseMs = 500, capMs = 20_000) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(Math.max(attempt, 0), 20));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.async = true;
    script.addEventListener("load", resolve, { once: true });
    script.addEventListener("error", () => reject(new Error(`could not load ${src}`)), { once: true });
    document.head.append(script);
  });
}

/** The Amazon IVS player on `video`; resolves once it plays, rejects if it cannot. */
async function playIvs(video, src, vendorBase, stamps, onFatal) {
  const ivs = await import(new URL("amazon-ivs-player.js", vendorBase).href);
  if (!ivs.isPlayerSupported) throw new Error("the IVS player is not supported by this browser");
  const player = ivs.create({
    wasmWorker: new URL("amazon-ivs-wasmworker.min.js", vendorBase).href,
    wasmBinary: new URL("amazon-ivs-wasmworker.min.wasm", vendorBase).href,
  });
  player.attachHTMLVideoElement(video);
  player.addEventListener(ivs.MetadataEventType.SEI, (sei) => {
    if (!isStampUuid(sei?.uuid)) return;
    const ms = decodeStamp(sei.data);
    if (ms !== null) stamps.add(sei.timestamp, ms);
  });
  return new Promise((resolve, reject) => {
    let playing = false;
    player.addEventListener(ivs.PlayerState.PLAYING, () => {
      if (playing) return;
      playing = true;
      resolve({
        kind: "ivs",
        latencyMs: () => player.getLiveLatency() * 1000,
        destroy: () => player.delete(),
      });
    });
    player.addEventListener(ivs.PlayerEventType.ERROR, (err) => {
      const why = `${err?.type ?? "error"} ${err?.code ?? ""} ${err?.message ?? ""}`.trim();
      if (!playing) {
        player.delete();
        reject(new Error(`the IVS player cannot play this stream: ${why}`));
      } else {
        onFatal(`the IVS player stopped: ${why}`);
      }
    });
    player.setAutoplay(true);
    player.setMuted(true); // browsers only autoplay muted video
    player.load(src);
  });
}

/** hls.js on `video`; resolves once the manifest is parsed and playback asked for. */
async function playHls(video, src, vendorBase, stamps, onFatal) {
  if (!window.Hls) await loadScript(new URL("hls.min.js", vendorBase).href);
  const Hls = window.Hls;
  if (!Hls?.isSupported()) throw new Error("hls.js is not supported by this browser");
  const hls = new Hls({ lowLatencyMode: true, backBufferLength: 30 });
  hls.on(Hls.Events.FRAG_PARSING_USERDATA, (_event, data) => {
    for (const sample of data.samples ?? []) {
      if (!isStampUuid(sample.uuid)) continue;
      const ms = decodeStamp(sample.userDataBytes);
      if (ms !== null) stamps.add(sample.pts, ms);
    }
  });
  return new Promise((resolve, reject) => {
    let started = false;
    hls.on(Hls.Events.MANIFEST_PARSED, () => {
      video.muted = true;
      video.play().catch(() => {}); // autoplay may still be refused; the controls remain
      if (started) return;
      started = true;
      resolve({
        kind: "hls",
        latencyMs: () => (Number.isFinite(hls.latency) ? hls.latency * 1000 : 0),
        destroy: () => hls.destroy(),
      });
    });
    hls.on(Hls.Events.ERROR, (_event, data) => {
      if (!data.fatal) return;
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
        hls.recoverMediaError();
        return;
      }
      if (!started) {
        hls.destroy();
        reject(new Error(`hls.js cannot play this stream: ${data.details}`));
      } else {
        onFatal(`hls.js stopped: ${data.details}`);
      }
    });
    hls.loadSource(src);
    hls.attachMedia(video);
  });
}

/** The browser's own HLS (Safari): no access to the stream's SEI, so no stamps. */
function playNative(video, src, onFatal) {
  if (!video.canPlayType("application/vnd.apple.mpegurl")) {
    return Promise.reject(new Error("this browser cannot play HLS by itself"));
  }
  video.muted = true;
  video.src = src;
  video.addEventListener("error", () => onFatal("the browser's player stopped"), { once: true });
  video.play().catch(() => {});
  return Promise.resolve({ kind: "native", latencyMs: () => 0, destroy: () => video.removeAttribute("src") });
}

const ORDER = { ivs: ["ivs", "hls", "native"], hls: ["hls", "native"], native: ["native"] };

/**
 * Asks the bridge for the stream's video and plays it, keeps asking while there is none, and
 * calls `onFrame({mode, ms})` with the capture time of the frame on screen (every displayed
 * frame, and every `IDLE_TICK_MS` while none is).
 */
export function startVideo({ infoUrl, vendorBase, prefer, parts, onMissing, onFrame }) {
  const { section, video, placeholder, placeholderText, syncNote } = parts;
  const stamps = new StampTrack();
  let attempt = 0;
  let current = null;
  /** `none` (no video for this stream, or no player can play it), `loading` or `playing`. */
  let state = "loading";
  let shownMode = null;
  let lastFrameAt = 0;

  function setPlayer(kind) {
    section.dataset.player = kind;
  }

  function report(mediaTime) {
    const now = Date.now();
    const capture = displayedCapture({
      stamps,
      mediaTime,
      latencyMs: current?.latencyMs() ?? 0,
      now,
      // a stream that has ended shows no frame any more: cards no longer wait for one
      video: video.ended ? "none" : state,
      paused: video.paused || video.readyState < 2,
    });
    if (capture.mode !== shownMode) {
      shownMode = capture.mode;
      syncNote.dataset.sync = capture.mode;
      const why = {
        stamp: "cards follow the capture stamps in the video",
        latency: "no capture stamps in this stream: cards follow the player's latency",
        waiting: "waiting for the picture: cards wait for their frame",
        none: "no video: cards show as they come",
      }[capture.mode];
      console.info(`spotter: player ${section.dataset.player}: ${why}`);
    }
    const behind = capture.ms === null ? "" : ` · picture ${((now - capture.ms) / 1000).toFixed(1)} s behind capture`;
    syncNote.textContent = `player: ${section.dataset.player} · sync: ${capture.mode}${behind}`;
    onFrame(capture);
  }

  function onVideoFrame(_now, meta) {
    lastFrameAt = performance.now();
    report(meta.mediaTime);
    video.requestVideoFrameCallback(onVideoFrame);
  }
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    video.requestVideoFrameCallback(onVideoFrame);
  }
  setInterval(() => {
    if (performance.now() - lastFrameAt >= IDLE_TICK_MS) report(video.currentTime);
  }, IDLE_TICK_MS);

  function waiting(text, delay) {
    video.hidden = true;
    placeholder.hidden = false;
    placeholderText.textContent = text;
    setTimeout(check, delay);
  }

  function fatal(why) {
    console.warn(`spotter: video: ${why}`);
    current?.destroy();
    current = null;
    state = "loading"; // it is expected back: cards wait for it, up to their longest hold
    stamps.clear();
    setPlayer("none");
    waiting("video interrupted, retrying…", backoffDelay(attempt++));
  }

  async function check() {
    let info;
    try {
      const res = await fetch(infoUrl, { headers: { accept: "application/json" } });
      if (res.status === 404) {
        state = "none";
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
    const src = typeof info?.video_url === "string" ? safeUrl(info.video_url, document.baseURI) : null;
    if (!src) {
      state = "none";
      waiting("waiting for video…", VIDEO_POLL_MS + Math.random() * 5_000);
      return;
    }
    state = "loading";
    await play(src);
  }

  async function play(src) {
    stamps.clear();
    for (const kind of ORDER[prefer] ?? ORDER.ivs) {
      try {
        if (kind === "ivs") current = await playIvs(video, src, vendorBase, stamps, fatal);
        else if (kind === "hls") current = await playHls(video, src, vendorBase, stamps, fatal);
        else current = await playNative(video, src, fatal);
      } catch (err) {
        console.info(`spotter: ${err.message}; trying the next player`);
        stamps.clear();
        continue;
      }
      attempt = 0;
      state = "playing";
      setPlayer(current.kind);
      console.info(`spotter: playing ${src} with the ${current.kind} player`);
      placeholder.hidden = true;
      video.hidden = false;
      return;
    }
    state = "none";
    setPlayer("none");
    waiting("This browser cannot play the live video; retrying…", backoffDelay(attempt++));
  }

  setPlayer("none");
  check();
}
