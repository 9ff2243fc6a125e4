// Helpers for the browser tests: free ports, a generated catalog, starting and stopping spotter-bridge, Chromium.

import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import zlib from "node:zlib";

const here = path.dirname(fileURLToPath(import.meta.url));
/** The workspace root (/work/main). */
export const ROOT = path.resolve(here, "..", "..");
export const WEB_DIR = path.join(ROOT, "cloud-bridge", "web");
/** The players the bridge serves at /static/vendor/, built by `npm run build` in cloud-bridge/web. */
export const VENDOR_DIR = path.join(WEB_DIR, "vendor");
const FIXTURE_CATALOG = path.join(ROOT, "tests", "fixtures", "catalog");

export const CHROMIUM = process.env.SPOTTER_CHROMIUM ?? "/usr/bin/chromium";
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export function bridgeBinary() {
  return path.resolve(here, process.env.SPOTTER_BRIDGE_BIN ?? "../../target/debug/spotter-bridge");
}

/** A loopback port nothing listens on right now (the kernel picks it). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Polls `check` every `everyMs` until it returns a truthy value or `timeoutMs` passes. A check that
 * throws is retried, unless the error has `fatal` set.
 */
export async function waitFor(what, check, { timeoutMs = 15_000, everyMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      if (err.fatal) throw err;
      lastError = err;
    }
    if (Date.now() > deadline) {
      const why = lastError ? `: last error: ${lastError.message}` : "";
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A TOML basic string (JSON's escapes are a subset of TOML's). */
const tomlString = (s) => JSON.stringify(s);

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

/** An RGB PNG of `width` x `height` whose pixel at (u, v) in [0, 1) is `paint(u, v)` ([r, g, b]). */
export function paintPng(width, height, paint) {
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = Buffer.alloc(1 + width * 3); // filter byte 0, then RGB
    for (let x = 0; x < width; x++) row.set(paint(x / width, y / height), 1 + x * 3);
    rows.push(row);
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk("IHDR", ihdr),
    pngChunk("IDAT", zlib.deflateSync(Buffer.concat(rows))),
    pngChunk("IEND", Buffer.alloc(0)),
  ]);
}

/** A tall PNG of a bottle (a product photo a square crop would cut). */
export function bottlePng() {
  return paintPng(60, 150, (u, v) => {
    const neck = v > 0.06 && v < 0.3 && Math.abs(u - 0.5) < 0.12;
    const body = v >= 0.3 && v < 0.95 && Math.abs(u - 0.5) < 0.36;
    if (v > 0.02 && v <= 0.06 && Math.abs(u - 0.5) < 0.14) return [40, 40, 40]; // cap
    if (neck || body) return v > 0.5 && v < 0.75 ? [240, 232, 200] : [48, 120, 88]; // glass, label
    return [255, 255, 255];
  });
}

/** A wide PNG of a striped scarf. */
export function scarfPng() {
  return paintPng(180, 60, (u, v) => {
    if (v < 0.15 || v > 0.85 || u < 0.04 || u > 0.96) return [255, 255, 255];
    return Math.floor(u * 12) % 2 ? [196, 64, 52] : [236, 196, 84];
  });
}

/** A small RGB PNG of a stylised mug (a rounded body and a handle) on a warm background. */
export function mugPng(size = 96) {
  return paintPng(size, size, (u, v) => {
    let rgb = [238, 231, 219]; // background
    const inBody = u > 0.22 && u < 0.68 && v > 0.25 && v < 0.8;
    const dx = (u - 0.72) / 0.12;
    const dy = (v - 0.5) / 0.15;
    const r = dx * dx + dy * dy;
    const inHandle = u > 0.66 && r < 1 && r > 0.35;
    if (inBody || inHandle) rgb = [32, 86, 140]; // enamel blue
    if (inBody && v < 0.31) rgb = [250, 250, 250]; // white rim
    if (v > 0.82 && v < 0.86 && u > 0.15 && u < 0.85) rgb = [205, 196, 182]; // shadow
    return rgb;
  });
}

/** The one product of the catalog written when there is no shared fixture. */
const MUG = {
  sku: "MUG-001",
  name: "Enamel camp mug",
  price: "14.00",
  currency: "USD",
  url: "https://shop.example/mug-001",
  image: "mug-front.png",
  png: () => mugPng(),
};

/**
 * The products of a catalog.toml, as `{sku: {key: string value}}`. Only what these tests need
 * from the minimal form: `[[product]]` tables with `key = "string"` lines.
 */
export function readCatalog(file) {
  const products = {};
  let current = null;
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const t = line.trim();
    if (t === "[[product]]") {
      current = {};
      continue;
    }
    if (t.startsWith("[")) {
      current = null;
      continue;
    }
    const m = /^([A-Za-z_]+)\s*=\s*"((?:[^"\\]|\\.)*)"/.exec(t);
    if (current && m) {
      current[m[1]] = JSON.parse(`"${m[2]}"`);
      if (m[1] === "sku") products[m[2]] = current;
    }
  }
  return products;
}

/**
 * The catalog directory to use: the shared fixture if there is one, else one written to `dir`
 * with `products` (`{sku, name, price, currency, url, image, png: () => Buffer}`; the mug alone by
 * default). A test that passes its own products always gets them.
 */
export async function catalogDir(dir, products = null) {
  if (!products && existsSync(path.join(FIXTURE_CATALOG, "catalog.toml"))) return FIXTURE_CATALOG;
  const out = path.join(dir, "catalog");
  await mkdir(out, { recursive: true });
  const lines = ["# Catalog written by tests/browser for one test run."];
  for (const p of products ?? [MUG]) {
    await writeFile(path.join(out, p.image), p.png());
    lines.push(
      "[[product]]",
      `sku = ${tomlString(p.sku)}`,
      `name = ${tomlString(p.name)}`,
      `price = ${tomlString(p.price)}`,
      `currency = ${tomlString(p.currency)}`,
      `url = ${tomlString(p.url)}`,
      `images = [${tomlString(p.image)}]`,
      "",
    );
  }
  await writeFile(path.join(out, "catalog.toml"), lines.join("\n"));
  return out;
}

/**
 * Writes a short HLS stream (H.264 test pattern, 2 s segments, with #EXT-X-ENDLIST) to `dir` with
 * GStreamer, standing in for what IVS serves. Returns the playlist's file name.
 */
export async function makeHls(dir, { seconds = 4, timeoutMs = 60_000 } = {}) {
  await mkdir(dir, { recursive: true });
  const fps = 30;
  const playlist = path.join(dir, "live.m3u8");
  const pipeline = [
    "videotestsrc", `num-buffers=${seconds * fps}`, "pattern=smpte", "!",
    `video/x-raw,width=640,height=360,pixel-aspect-ratio=1/1,framerate=${fps}/1`, "!",
    "x264enc", "speed-preset=ultrafast", "tune=zerolatency", `key-int-max=${2 * fps}`, "bitrate=800", "!",
    "h264parse", "!",
    "hlssink2", `location=${path.join(dir, "seg%05d.ts")}`, `playlist-location=${playlist}`,
    "target-duration=2", "playlist-length=0",
  ];
  const child = spawn("gst-launch-1.0", ["-q", ...pipeline], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.setEncoding("utf8").on("data", (c) => (output += c));
  child.stderr.setEncoding("utf8").on("data", (c) => (output += c));
  let exited = null;
  child.on("error", (err) => (exited = { error: err }));
  child.on("exit", (code, signal) => (exited = { code, signal }));
  // The playlist is done when hlssink2 writes #EXT-X-ENDLIST at EOS. gst-launch itself sometimes
  // hangs on its way out after that (seen with GStreamer 1.22), so that, not its exit, is the signal.
  const done = () => existsSync(playlist) && readFileSync(playlist, "utf8").includes("#EXT-X-ENDLIST");
  try {
    await waitFor("gst-launch-1.0 to write the test HLS stream", () => {
      if (done()) return true;
      if (exited) {
        const how = exited.error ? exited.error.message : `code ${exited.code}, signal ${exited.signal}`;
        throw Object.assign(new Error(`gst-launch-1.0 ended (${how}) without finishing the playlist`), {
          fatal: true,
        });
      }
      return false;
    }, { timeoutMs, everyMs: 50 });
  } catch (err) {
    throw new Error(
      `could not make the test HLS stream: ${err.message}; it needs GStreamer with plugins good, ` +
        `bad and ugly (x264enc, hlssink2)\n${output}`,
    );
  } finally {
    if (!exited) child.kill("SIGKILL");
  }
  return path.basename(playlist);
}


/**
 * Makes a temp dir with a bridge config on free ports; returns what a test needs to reach it.
 * `chat` (`{guests, blockedWords}`) writes a `[chat]` section with its state in the temp dir and a
 * fresh signing key, passed to the bridge in `SPOTTER_CHAT_KEY` (returned as `chatKey`, for
 * minting tokens); `products` writes that catalog (see catalogDir).
 */
export async function bridgeSetup({ chat = null, products = null } = {}) {
  const dir = await mkdtemp(path.join(tmpdir(), "spotter-browser-"));
  const httpPort = await freePort();
  let mqttPort = await freePort();
  while (mqttPort === httpPort) mqttPort = await freePort();
  const catalog = await catalogDir(dir, products);
  const env = {};
  const chatLines = [];
  let chatKey = null;
  if (chat) {
    chatKey = randomBytes(32).toString("hex");
    env.SPOTTER_CHAT_KEY = chatKey;
    const stateDir = path.join(dir, "chat-state");
    await mkdir(stateDir, { recursive: true });
    chatLines.push(
      "[chat]",
      "enabled = true",
      `guests = ${chat.guests === true}`,
      `state_dir = ${tomlString(stateDir)}`,
      `blocked_words = [${(chat.blockedWords ?? []).map(tomlString).join(", ")}]`,
      "",
    );
  }
  const hlsDir = path.join(dir, "hls");
  const playlist = await makeHls(hlsDir);
  const configFile = path.join(dir, "bridge.toml");
  await writeFile(
    configFile,
    [
      "# spotter-bridge config written by tests/browser/viewer.test.js",
      "[http]",
      `listen = ${tomlString(`127.0.0.1:${httpPort}`)}`,
      "",
      "[mqtt]",
      "embedded = true",
      `embedded_listen = ${tomlString(`127.0.0.1:${mqttPort}`)}`,
      "",
      "[catalog]",
      `dir = ${tomlString(catalog)}`,
      "",
      "[web]",
      `vendor_dir = ${tomlString(VENDOR_DIR)}`,
      `hls_dir = ${tomlString(hlsDir)}`,
      "",
      ...chatLines,
      "[[stream]]",
      'studio = "demo"',
      'stream = "main"',
      "",
      "[[stream]]",
      'studio = "demo"',
      'stream = "video"',
      `video_url = ${tomlString(`/hls/${playlist}`)}`,
      "",
    ].join("\n"),
  );
  return {
    dir,
    configFile,
    catalog,
    env,
    chatKey,
    httpPort,
    mqttPort,
    videoUrl: `/hls/${playlist}`,
    baseUrl: `http://127.0.0.1:${httpPort}`,
    mqttUrl: `mqtt://127.0.0.1:${mqttPort}`,
  };
}

/**
 * Starts a long-running process (RUST_LOG=info unless set, no colours), keeping the tail of its
 * output for failure messages. `stop()` sends SIGTERM, then SIGKILL after 10 s.
 */
export function startProcess(cmd, args, { cwd, env = {} } = {}) {
  const child = spawn(cmd, args, {
    cwd,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info", NO_COLOR: "1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const keep = (chunk) => {
    output += chunk;
    if (output.length > 200_000) output = output.slice(-100_000);
  };
  child.stdout.setEncoding("utf8").on("data", keep);
  child.stderr.setEncoding("utf8").on("data", keep);
  let exited = null;
  const exit = new Promise((resolve) => {
    child.on("exit", (code, signal) => resolve((exited = { code, signal })));
    child.on("error", (err) => resolve((exited = { code: null, signal: null, error: err })));
  });
  return {
    child,
    exit,
    output: () => output,
    exited: () => exited,
    async stop() {
      if (exited) return exited;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      const result = await exit;
      clearTimeout(timer);
      return result;
    },
  };
}

/**
 * Starts spotter-bridge and waits until /healthz answers 200. Rejects with the bridge's output if
 * it exits first or does not come up in time.
 */
export async function startBridge(setup, { timeoutMs = 30_000 } = {}) {
  const bin = bridgeBinary();
  if (!existsSync(bin)) {
    throw new Error(`no bridge binary at ${bin}: build it (cargo build -p spotter-bridge) or set SPOTTER_BRIDGE_BIN`);
  }
  const args = (process.env.SPOTTER_BRIDGE_ARGS ?? "--config {config}")
    .split(" ")
    .filter(Boolean)
    .map((a) => a.replace("{config}", setup.configFile));
  const bridge = startProcess(bin, args, { cwd: setup.dir, env: setup.env });
  try {
    await waitFor(
      "the bridge to answer GET /healthz",
      async () => {
        const exited = bridge.exited();
        if (exited) {
          const how = exited.error ? exited.error.message : `code ${exited.code}, signal ${exited.signal}`;
          throw Object.assign(new Error(`spotter-bridge exited (${how}) before answering /healthz`), {
            fatal: true,
          });
        }
        const res = await fetch(`${setup.baseUrl}/healthz`, { signal: AbortSignal.timeout(1_000) });
        return res.ok;
      },
      { timeoutMs, everyMs: 100 },
    ).catch(async (err) => {
      throw new Error(`${err.message}\n--- bridge output ---\n${bridge.output()}`);
    });
  } catch (err) {
    await bridge.stop();
    throw err;
  }
  return bridge;
}

/** Launches headless Chromium with a fresh profile in `dir`. */
export async function launchChromium(chromium, dir) {
  const profile = await mkdtemp(path.join(dir, "chromium-profile-"));
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    locale: "en-US",
    viewport: { width: 1280, height: 720 },
  });
}

/** Launches headless Chromium without a profile, for tests that need several contexts (viewers). */
export function launchBrowser(chromium) {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

const b64url = (data) => Buffer.from(data).toString("base64url");

/**
 * A chat token as a shop mints one (HS256 JWT): `claims` are the payload (`sub`, `name`, `caps`,
 * `exp`...), `key` the shared secret. `header` replaces the JWT header, for tests of what a bridge
 * must refuse (`alg: "none"`).
 */
export function mintToken(key, claims, { header = { alg: "HS256", typ: "JWT" } } = {}) {
  const signed = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = createHmac("sha256", key).update(signed).digest("base64url");
  return `${signed}.${signature}`;
}

/** Claims for user `sub` with `caps`, valid for `ttlSecs` (negative: expired that long ago). */
export function claims(sub, name, caps = ["send"], ttlSecs = 3600) {
  const now = Math.floor(Date.now() / 1000);
  return { sub, name, caps, iat: now, exp: now + ttlSecs };
}

/**
 * Whether a console message is a problem of the page's own: an error, other than the IVS player
 * failing to report playback telemetry to AWS (a host name this machine cannot resolve, and its
 * own "PoPClient" log of the failed send), which these tests cannot reach and the page never
 * depends on.
 */
export function isPageProblem(msg) {
  return msg.type() === "error" && !/net::ERR_NAME_NOT_RESOLVED|^PoPClient send error/.test(msg.text());
}
