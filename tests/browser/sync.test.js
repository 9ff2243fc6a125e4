// Cards in step with the picture, in real Chromium: the real agent plays a clip whose frames carry
// their own number (a code in the top-left corner), uploads it as HLS with its capture stamps, and
// publishes its events to the real bridge; the viewer page plays the HLS with the IVS player and
// with hls.js. At the moment a card enters or leaves the page, the test reads the frame number off
// the video and compares it with the frame the event was recognised in.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import mqtt from "mqtt";
import { chromium } from "playwright-core";

import { ROOT, freePort, launchChromium, startBridge, startProcess, waitFor } from "./support.js";

/** The median and the largest of some numbers. */
function p50max(xs) {
  const sorted = [...xs].sort((a, b) => a - b);
  return { p50: sorted[Math.floor((sorted.length - 1) / 2)], max: sorted.at(-1) };
}

const BIN = path.join(ROOT, "target", "debug");
const MODEL = path.join(ROOT, "models", "weights", "efficientnet-lite0.safetensors");
const FPS = 30;
/** The clip: three products, one after the other, each on screen for 4 s. */
const CLIP_SECS = 30;
const SHOWS = ["MUG-001@7-11", "GTR-001@14-18", "CAM-001@21-25"];
const SKUS = SHOWS.map((s) => s.split("@")[0]);
/** A card may be this late after its frame is displayed, never early. */
const MAX_LATE_MS = 250;
/**
 * The viewers: one page on each player from the start, and a late joiner that opens when the first
 * product's `new` reaches the broker, while its frame is not yet on anybody's screen: its card
 * comes in `hello`'s snapshot and must wait for that frame all the same.
 */
const VIEWERS = [
  { name: "ivs", player: "ivs" },
  { name: "hls", player: "hls" },
  { name: "late", player: "hls" },
];

const toml = (s) => JSON.stringify(s);

/** Runs a command to completion; rejects with its output when it fails. */
function run(cmd, args, { timeoutMs = 240_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.setEncoding("utf8").on("data", (c) => (output += c));
    child.stderr.setEncoding("utf8").on("data", (c) => (output += c));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(output);
      else reject(new Error(`${path.basename(cmd)} ${args.join(" ")}: exit ${code ?? signal}\n${output}`));
    });
  });
}

/**
 * Runs in the page before its own scripts: on every card that enters or leaves `#cards`, reads the
 * frame number painted in the top-left corner of the frame on screen (18 cells of 16 px at
 * (16, 16) on 1280x720: white and black guards, then 16 bits, most significant first) and keeps
 * it in `window.__cardFrames`.
 */
function watchCards() {
  window.__cardFrames = [];
  window.__firstFrame = null;
  const canvas = document.createElement("canvas");
  function frameNumber() {
    const video = document.getElementById("video");
    if (!video || video.videoWidth === 0) return null;
    const w = video.videoWidth;
    const h = video.videoHeight;
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(video, 0, 0, w, h);
    const scale = Math.min(w / 1280, h / 720);
    const cell = (i) => {
      const cx = (16 + 16 * i + 8) * scale;
      const cy = (16 + 8) * scale;
      const half = 4 * scale;
      const d = ctx.getImageData(Math.round(cx - half), Math.round(cy - half), Math.max(1, Math.round(2 * half)), Math.max(1, Math.round(2 * half))).data;
      let sum = 0;
      for (let p = 0; p < d.length; p += 4) sum += 0.299 * d[p] + 0.587 * d[p + 1] + 0.114 * d[p + 2];
      return sum / (d.length / 4);
    };
    const white = cell(0);
    const black = cell(1);
    if (white - black < 60) return null; // no code in view
    const threshold = (white + black) / 2;
    let n = 0;
    for (let i = 2; i < 18; i++) n = n * 2 + (cell(i) > threshold ? 1 : 0);
    return n;
  }
  const record = (what, node) => {
    if (node.nodeType !== 1 || !node.dataset?.eventId) return;
    window.__cardFrames.push({
      what,
      eventId: node.dataset.eventId,
      sku: node.dataset.sku,
      frame: frameNumber(),
      at: Date.now(),
    });
  };
  const start = () => {
    const cards = document.getElementById("cards");
    if (!cards) return;
    new MutationObserver((changes) => {
      for (const c of changes) {
        c.addedNodes.forEach((n) => record("enter", n));
        c.removedNodes.forEach((n) => record("leave", n));
      }
    }).observe(cards, { childList: true });
    // The first frame this page showed: a card whose frame went by before it is due at once.
    const video = document.getElementById("video");
    const first = () => {
      const n = frameNumber();
      if (n === null) video.requestVideoFrameCallback(first);
      else window.__firstFrame = n;
    };
    video?.requestVideoFrameCallback(first);
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
}

describe("cards in step with the picture", { timeout: 420_000 }, () => {
  let dir;
  let bridge;
  let agent;
  let context;
  let client;
  const events = [];
  const pages = {};
  let openPage;

  before(async () => {
    for (const bin of ["spotter-agent", "spotter-clipgen", "spotter-bridge"]) {
      assert.ok(existsSync(path.join(BIN, bin)), `no ${bin} in ${BIN}: run cargo build --workspace`);
    }
    assert.ok(existsSync(MODEL), `no model weights at ${MODEL}: run make setup`);
    dir = await mkdtemp(path.join(tmpdir(), "spotter-sync-"));
    const catalog = path.join(dir, "catalog");
    const clip = path.join(dir, "clip.mp4");
    await run(path.join(BIN, "spotter-clipgen"), ["catalog", "--out", catalog, "--products", ...SKUS, "SHOE-001"]);
    await run(path.join(BIN, "spotter-clipgen"), [
      "clip", "--catalog", catalog, "--out", clip, "--duration-secs", String(CLIP_SECS),
      ...SHOWS.flatMap((show) => ["--show", show]),
      "--frame-code",
    ]);

    const httpPort = await freePort();
    let mqttPort = await freePort();
    while (mqttPort === httpPort) mqttPort = await freePort();
    const hls = path.join(dir, "hls");
    await mkdir(hls, { recursive: true });
    const setup = {
      dir,
      configFile: path.join(dir, "bridge.toml"),
      baseUrl: `http://127.0.0.1:${httpPort}`,
    };
    await writeFile(
      setup.configFile,
      [
        "[http]", `listen = ${toml(`127.0.0.1:${httpPort}`)}`,
        "[mqtt]", "embedded = true", `embedded_listen = ${toml(`127.0.0.1:${mqttPort}`)}`,
        "[catalog]", `dir = ${toml(catalog)}`,
        "[web]", `vendor_dir = ${toml(path.join(ROOT, "cloud-bridge", "web", "vendor"))}`, `hls_dir = ${toml(hls)}`,
        "[[stream]]", 'studio = "sync"', 'stream = "main"', 'video_url = "/hls/index.m3u8"',
        "",
      ].join("\n"),
    );
    bridge = await startBridge(setup);

    client = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, {
      clientId: `spotter-sync-test-${process.pid}`,
      clean: true,
      reconnectPeriod: 0,
    });
    client.on("message", (_topic, payload) => {
      try {
        events.push(JSON.parse(payload.toString()));
      } catch {
        // not ours to judge: the bridge checks what it receives
      }
    });
    await client.subscribeAsync("spotter/v1/sync/main/events", { qos: 1 });

    const agentToml = path.join(dir, "agent.toml");
    await writeFile(
      agentToml,
      [
        'studio = "sync"', 'stream = "main"',
        "[source]", 'kind = "uri"', `uri = ${toml(`file://${clip}`)}`, "realtime = true",
        "[analysis]", `catalog = ${toml(catalog)}`, `model = ${toml(MODEL)}`,
        "[mqtt]", `url = ${toml(`mqtt://127.0.0.1:${mqttPort}`)}`, 'client_id = "spotter-agent-sync"',
        "[upload]", 'kind = "hls"', `hls_dir = ${toml(hls)}`, "keyframe_interval_secs = 1",
        "[outbox]", `dir = ${toml(path.join(dir, "outbox"))}`,
        "",
      ].join("\n"),
    );
    agent = startProcess(path.join(BIN, "spotter-agent"), ["run", "--config", agentToml]);
    // The pages start playing as soon as the stream's playlist is there, long before the product
    // comes on screen (9 s into the clip).
    await waitFor("the agent's HLS playlist", () => {
      if (agent.exited()) throw Object.assign(new Error(`the agent exited\n${agent.output()}`), { fatal: true });
      return existsSync(path.join(hls, "index.m3u8"));
    }, { timeoutMs: 120_000 });

    context = await launchChromium(chromium, dir);
    await context.addInitScript(watchCards);
    openPage = async ({ name, player }) => {
      const page = await context.newPage();
      page.on("console", (m) => {
        if (/spotter:/.test(m.text())) console.log(`[${name}] ${m.text()}`);
      });
      await page.goto(`${setup.baseUrl}/watch/sync/main?player=${player}&debug=1`);
      pages[name] = page;
    };
    for (const viewer of VIEWERS.filter((v) => v.name !== "late")) await openPage(viewer);
  });

  after(async () => {
    await client?.endAsync(true).catch(() => {});
    await context?.close().catch(() => {});
    const agentExit = await agent?.stop();
    const bridgeExit = await bridge?.stop();
    if (process.env.SPOTTER_BRIDGE_LOG) {
      console.log(`--- agent (${JSON.stringify(agentExit)}) ---\n${agent?.output()}`);
      console.log(`--- bridge (${JSON.stringify(bridgeExit)}) ---\n${bridge?.output()}`);
    }
  });

  test("each card enters on the frame its product was recognised in and leaves on its end's frame", async () => {
    // The agent's analysed frames carry their time in the clip: the clip plays once from its start.
    const frameOf = (e) => Math.round((e.pts_ms * FPS) / 1000);
    // What a viewer sees with a card up: the IVS page at desktop size, the hls.js one at phone width.
    const artifacts = process.env.SPOTTER_ARTIFACTS ?? dir;
    await mkdir(artifacts, { recursive: true });
    await pages.hls.setViewportSize({ width: 375, height: 812 });
    const late = waitFor("the first product's new event", () => events.find((e) => e.type === "new"), {
      timeoutMs: 120_000,
      everyMs: 20,
    }).then(() => openPage(VIEWERS.find((v) => v.name === "late")));
    // Taken once every page shows the second product's card, seconds from any card entering or
    // leaving: a screenshot holds up the browser's compositor, which would make another page's
    // card late.
    const shots = (async () => {
      const second = await waitFor(`${SKUS[1]}'s new event`, () => events.find((e) => e.type === "new" && e.sku === SKUS[1]), {
        timeoutMs: 120_000,
        everyMs: 100,
      });
      await waitFor(`every page to show ${SKUS[1]}'s card`, async () => {
        for (const { name } of VIEWERS) {
          const frames = await pages[name]?.evaluate(() => window.__cardFrames);
          if (!frames?.some((f) => f.what === "enter" && f.eventId === second.event_id)) return false;
        }
        return true;
      }, { timeoutMs: 120_000, everyMs: 100 });
      await pages.ivs.screenshot({ path: path.join(artifacts, "sync-ivs-desktop.png") });
      await pages.hls.screenshot({ path: path.join(artifacts, "sync-hls-phone.png"), fullPage: true });
    })();
    const appearances = await waitFor(
      "every product's new and end events",
      () => {
        const found = SKUS.map((sku) => {
          const first = events.find((e) => e.type === "new" && e.sku === sku);
          const end = first && events.find((e) => e.type === "end" && e.event_id === first.event_id);
          return end ? { sku, first, end } : null;
        });
        return found.every(Boolean) ? found : null;
      },
      { timeoutMs: 120_000, everyMs: 200 },
    ).catch((err) => {
      throw new Error(`${err.message}; events: ${JSON.stringify(events)}\n--- agent ---\n${agent.output().slice(-4000)}`);
    });
    await Promise.all([shots, late]);
    const rows = [];
    for (const { name: player } of VIEWERS) {
      const page = pages[player];
      const shownFirst = await page.evaluate(() => window.__firstFrame);
      for (const { sku, first, end } of appearances) {
        const id = first.event_id;
        // Due on its own frame, or on the page's first if that came later (a late joiner's player
        // may start after the product appeared).
        const due = Math.max(frameOf(first), shownFirst ?? 0);
        const seen = await waitFor(
          `the ${player} page to show and then remove the card of ${sku}`,
          async () => {
            const frames = await page.evaluate(() => window.__cardFrames);
            const enter = frames.find((f) => f.what === "enter" && f.eventId === id);
            const leave = frames.find((f) => f.what === "leave" && f.eventId === id);
            return enter && leave ? { enter, leave } : null;
          },
          { timeoutMs: 60_000, everyMs: 200 },
        );
        rows.push({
          player,
          sku,
          enterFrame: seen.enter.frame,
          recognisedFrame: frameOf(first),
          pageFirstFrame: shownFirst,
          enterLateMs: seen.enter.frame === null ? null : ((seen.enter.frame - due) * 1000) / FPS,
          leaveFrame: seen.leave.frame,
          endFrame: frameOf(end),
          leaveLateMs: seen.leave.frame === null ? null : ((seen.leave.frame - frameOf(end)) * 1000) / FPS,
        });
      }
    }
    console.log(`card timing (ms after its frame; negative: early):\n${rows.map((r) => JSON.stringify(r)).join("\n")}`);
    for (const { name: player, player: kind } of VIEWERS) {
      const mine = rows.filter((r) => r.player === player && r.enterLateMs !== null && r.leaveLateMs !== null);
      console.log(`${player}: enter ${JSON.stringify(p50max(mine.map((r) => r.enterLateMs)))} ms, leave ${JSON.stringify(p50max(mine.map((r) => r.leaveLateMs)))} ms`);
      assert.equal(await pages[player].locator("#player").getAttribute("data-player"), kind, `${player}: the page did not play with ${kind}`);
      assert.equal(await pages[player].locator("#sync").getAttribute("data-sync"), "stamp", `${player}: the page did not follow the capture stamps`);
    }
    for (const r of rows) {
      const what = `${r.player}, ${r.sku}`;
      assert.notEqual(r.enterFrame, null, `${what}: no frame number readable when the card entered`);
      assert.ok(r.enterLateMs >= 0, `${what}: the card entered ${-r.enterLateMs} ms before its frame`);
      assert.ok(r.enterLateMs <= MAX_LATE_MS, `${what}: the card entered ${r.enterLateMs} ms after its frame`);
      assert.notEqual(r.leaveFrame, null, `${what}: no frame number readable when the card left`);
      assert.ok(r.leaveLateMs >= 0, `${what}: the card left ${-r.leaveLateMs} ms before its end's frame`);
      assert.ok(r.leaveLateMs <= MAX_LATE_MS, `${what}: the card left ${r.leaveLateMs} ms after its end's frame`);
    }
  });
});
