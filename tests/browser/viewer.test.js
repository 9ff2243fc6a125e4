// End-to-end test of the viewer page: the real spotter-bridge, headless Chromium, and events published over MQTT.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import mqtt from "mqtt";
import { chromium } from "playwright-core";

import { ROOT, bridgeSetup, isPageProblem, launchChromium, readCatalog, startBridge, waitFor } from "./support.js";

const GOLDEN = JSON.parse(
  readFileSync(path.join(ROOT, "protocol", "tests", "golden", "event_new.json"), "utf8"),
);
const TOPIC = "spotter/v1/demo/main/events";
const SKU = GOLDEN.sku;
const WAIT = { timeout: 15_000 };

let seq = GOLDEN.seq;
/** An event like the golden one: fresh id and capture time, the stream's next seq. */
function event(type, eventId = `e2e-${randomUUID()}`) {
  return { ...GOLDEN, type, event_id: eventId, seq: seq++, captured_at_ms: Date.now() };
}

async function publisher(url) {
  return mqtt.connectAsync(url, {
    clientId: `spotter-browser-test-${process.pid}-${Date.now()}`,
    clean: true,
    connectTimeout: 5_000,
    reconnectPeriod: 0,
  });
}

const publish = (client, payload, topic = TOPIC) =>
  client.publishAsync(topic, typeof payload === "string" ? payload : JSON.stringify(payload), { qos: 1 });

const card = (page, eventId) => page.locator(`#cards .card[data-sku="${SKU}"][data-event-id="${eventId}"]`);

/**
 * Publishes `payload` until its card shows. Only for the first event after the bridge starts:
 * /healthz answering does not say that its MQTT subscription is in place yet, and a QoS 1
 * publish with no subscriber is dropped by the broker. Republishing the same event is harmless
 * (same event id and seq: a duplicate both sides ignore).
 */
async function publishUntilShown(client, page, payload, { topic = TOPIC, timeoutMs = 20_000 } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    await publish(client, payload, topic);
    try {
      await card(page, payload.event_id).waitFor({ state: "visible", timeout: 1_000 });
      return;
    } catch (err) {
      if (Date.now() > deadline) {
        throw new Error(`no card for ${payload.event_id} within ${timeoutMs} ms of publishing: ${err.message}`);
      }
    }
  }
}

describe("viewer page", () => {
  let setup;
  let bridge;
  let context;
  let page;
  let client;
  let product;
  let artifacts;
  const problems = [];
  const socketUrls = [];

  function watch(p) {
    p.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    p.on("console", (msg) => {
      if (isPageProblem(msg)) problems.push(`console error: ${msg.text()}`);
    });
    p.on("websocket", (ws) => socketUrls.push(ws.url()));
  }

  before(async () => {
    setup = await bridgeSetup();
    artifacts = process.env.SPOTTER_ARTIFACTS ?? setup.dir;
    await mkdir(artifacts, { recursive: true });
    product = readCatalog(path.join(setup.catalog, "catalog.toml"))[SKU];
    assert.ok(product, `catalog ${setup.catalog} has no product ${SKU}`);
    bridge = await startBridge(setup);
    context = await launchChromium(chromium, setup.dir);
    page = context.pages()[0] ?? (await context.newPage());
    watch(page);
    client = await publisher(setup.mqttUrl);
  });

  after(async () => {
    // Each step on its own, so one failure does not leave the bridge running.
    await client?.endAsync(true).catch(() => {});
    await context?.close().catch(() => {});
    const exit = await bridge?.stop();
    if (process.env.SPOTTER_BRIDGE_LOG || exit?.code) {
      console.log(`--- bridge output (exit ${JSON.stringify(exit)}) ---\n${bridge?.output()}`);
    }
    console.log(`artifacts in ${artifacts}`);
  });

  test("the bridge serves the page, its assets and the stream's info", async () => {
    const get = async (p) => {
      const res = await fetch(setup.baseUrl + p);
      assert.equal(res.status, 200, `GET ${p}: HTTP ${res.status} ${await res.clone().text()}`);
      return res;
    };
    const html = await get("/watch/demo/main");
    assert.match(html.headers.get("content-type") ?? "", /^text\/html/, "GET /watch/demo/main");
    assert.match(await html.text(), /id="cards"/);
    for (const [p, type] of [
      ["/static/app.js", /^(text|application)\/javascript/],
      ["/static/style.css", /^text\/css/],
      ["/static/vendor/hls.min.js", /^(text|application)\/javascript/],
      ["/static/vendor/amazon-ivs-player.js", /^(text|application)\/javascript/],
      ["/static/vendor/amazon-ivs-wasmworker.min.js", /^(text|application)\/javascript/],
      // WebAssembly.instantiateStreaming takes nothing else
      ["/static/vendor/amazon-ivs-wasmworker.min.wasm", /^application\/wasm$/],
    ]) {
      const res = await get(p);
      // Module scripts are refused by the browser unless served with a JavaScript MIME type.
      assert.match(res.headers.get("content-type") ?? "", type, `content-type of ${p}`);
    }
    const info = await (await get("/api/streams/demo/main")).json();
    assert.deepEqual(info, { studio: "demo", stream: "main", video_url: null });
  });

  test("the page connects and waits for video", async () => {
    const res = await page.goto(`${setup.baseUrl}/watch/demo/main`);
    assert.equal(res?.status(), 200);
    await page.locator('#conn[data-state="live"]').waitFor(WAIT);
    assert.match(await page.locator("#conn").textContent(), /live/);
    await page.locator("#placeholder").getByText("waiting for video").waitFor(WAIT);
    assert.equal(await page.locator("#video").isVisible(), false);
    assert.equal(await page.evaluate(() => document.compatMode), "CSS1Compat", "standards mode");
    assert.equal(await page.locator("#cards").getAttribute("aria-live"), "polite");
    assert.equal(await page.locator("#cards .card").count(), 0);
    assert.match(await page.locator("#stream-name").textContent(), /demo \/ main/);
  });

  test("a new event shows a card with the catalog's data, and its end removes it", async () => {
    const first = event("new");
    await publishUntilShown(client, page, first);
    const shown = card(page, first.event_id);
    assert.equal(await page.locator("#cards .card").count(), 1);

    assert.equal(await shown.locator(".card-name").textContent(), product.name);
    const price = new Intl.NumberFormat("en-US", { style: "currency", currency: product.currency }).format(
      product.price,
    );
    assert.equal(await shown.locator(".card-price").textContent(), price);
    if (SKU === "MUG-001" && product.price === "14.00") assert.equal(price, "$14.00");

    const shop = shown.getByRole("link", { name: /Shop/ });
    assert.equal(await shop.getAttribute("href"), product.url);
    assert.equal(await shop.getAttribute("target"), "_blank");
    assert.match((await shop.getAttribute("rel")) ?? "", /\bnoopener\b/);

    if (/images\s*=\s*\[\s*"/.test(readFileSync(path.join(setup.catalog, "catalog.toml"), "utf8"))) {
      const img = shown.locator("img.card-image");
      await waitFor("the card's image to load", () =>
        img.evaluate((i) => i.complete && i.naturalWidth > 0),
      );
    }
    await page.screenshot({ path: path.join(artifacts, "viewer-card.png"), animations: "disabled" });

    await publish(client, { ...event("end", first.event_id) });
    await shown.waitFor({ state: "detached", ...WAIT });
    assert.equal(await page.locator("#cards .card").count(), 0);
  });

  test("garbage on the events topic does not break the page", async () => {
    const redelivered = event("new");
    await publish(client, redelivered);
    await card(page, redelivered.event_id).waitFor(WAIT);
    await publish(client, event("end", redelivered.event_id));
    await card(page, redelivered.event_id).waitFor({ state: "detached", ...WAIT });

    await publish(client, "this is not json {");
    await publish(client, "{}");
    await publish(client, "<img src=x onerror=alert(1)>");
    await publish(client, { ...event("new"), bbox: [0.9, 0.1, 0.2, 0.5] });
    await publish(client, { ...event("new"), v: 2 });
    await publish(client, JSON.stringify({ ...event("new"), pad: "x".repeat(5_000) }));
    // A broker redelivery of an ended appearance's `new`: must not bring its card back.
    await publish(client, redelivered);

    const next = event("new");
    await publish(client, next);
    await card(page, next.event_id).waitFor(WAIT);
    // Events on one topic from one client arrive in order: everything above has been handled.
    assert.equal(await card(page, redelivered.event_id).count(), 0, "an ended card came back");
    assert.equal(await page.locator("#cards .card").count(), 1);
    assert.equal((await page.locator("#conn").getAttribute("data-state")), "live");
    assert.deepEqual(problems, []);
  });

  test("a late joiner sees what is on screen", async () => {
    const onscreen = await page.locator("#cards .card").getAttribute("data-event-id");
    const late = await context.newPage();
    watch(late);
    await late.goto(`${setup.baseUrl}/watch/demo/main`);
    await card(late, onscreen).waitFor(WAIT);
    assert.deepEqual(
      await late.locator("#cards .card").evaluateAll((cards) => cards.map((c) => c.dataset.eventId)),
      [onscreen],
      "the late joiner's snapshot (hello.onscreen) is not what the first page shows",
    );
    await late.setViewportSize({ width: 390, height: 844 });
    await late.screenshot({ path: path.join(artifacts, "viewer-narrow.png"), fullPage: true, animations: "disabled" });
    await late.close();
  });

  test("a viewer that drops off gets what it missed when it reconnects", async () => {
    // The viewer's socket goes through Playwright so the test can cut it, and hold the reconnect
    // until an event has gone by that this viewer then has to recover.
    const viewer = await context.newPage();
    watch(viewer);
    const hellos = [];
    const urls = [];
    let route = null;
    let held = null;
    await viewer.routeWebSocket(/\/ws\/demo\/main/, (ws) => {
      urls.push(ws.url());
      const attach = () => {
        const server = ws.connectToServer();
        server.onMessage((m) => {
          const msg = JSON.parse(m);
          if (msg.kind === "hello") hellos.push(msg);
          ws.send(m);
        });
        ws.onMessage((m) => server.send(m));
        ws.onClose(() => server.close());
        server.onClose(() => ws.close());
        route = { ws, server };
      };
      if (urls.length === 1) attach();
      else held = attach;
    });
    await viewer.goto(`${setup.baseUrl}/watch/demo/main`);
    await viewer.locator('#conn[data-state="live"]').waitFor(WAIT);
    // demo/main has no video: once the page knows, what is on screen shows at once
    await viewer.locator('#sync[data-sync="none"]').waitFor({ state: "attached", ...WAIT });
    const before = await viewer.locator("#cards .card").evaluateAll((cs) => cs.map((c) => c.dataset.eventId));

    await route.ws.close({ code: 1012, reason: "cut by the test" });
    await waitFor("the viewer to reconnect", () => held !== null);
    const missed = event("new");
    await publish(client, missed);
    await card(page, missed.event_id).waitFor(WAIT); // the bridge has it: the other viewer shows it
    assert.equal(await card(viewer, missed.event_id).count(), 0);

    const resume = new URL(urls.at(-1)).searchParams;
    assert.equal(resume.get("epoch"), hellos[0].epoch, `reconnected with ${urls.at(-1)}`);
    assert.equal(resume.get("offset"), String(hellos[0].offset), "nothing arrived in between");
    held();
    await card(viewer, missed.event_id).waitFor(WAIT);
    assert.equal(hellos.length, 2);
    assert.equal(hellos[1].resync, false, "the bridge still had the missed event: no resync needed");
    assert.deepEqual(
      await viewer.locator("#cards .card").evaluateAll((cs) => cs.map((c) => c.dataset.eventId)),
      [missed.event_id, ...before],
    );
    await viewer.locator('#conn[data-state="live"]').waitFor(WAIT);

    await publish(client, event("end", missed.event_id));
    await card(viewer, missed.event_id).waitFor({ state: "detached", ...WAIT });
    await card(page, missed.event_id).waitFor({ state: "detached", ...WAIT });
    await viewer.close();
  });

  test("a stream with video plays it with the IVS player, muted, beside its own cards", async () => {
    const info = await (await fetch(`${setup.baseUrl}/api/streams/demo/video`)).json();
    assert.deepEqual(info, { studio: "demo", stream: "video", video_url: setup.videoUrl });
    const viewer = await context.newPage();
    watch(viewer);
    await viewer.goto(`${setup.baseUrl}/watch/demo/video`);
    await viewer.locator('#conn[data-state="live"]').waitFor(WAIT);
    await viewer.waitForFunction(
      () => {
        const v = document.getElementById("video");
        return v && !v.hidden && !v.paused && v.currentTime > 0.5;
      },
      null,
      WAIT,
    );
    const video = await viewer.evaluate(() => {
      const v = document.getElementById("video");
      return { muted: v.muted, controls: v.controls, decoded: v.videoWidth > 0 && v.videoHeight > 0, error: v.error?.message };
    });
    assert.deepEqual(video, { muted: true, controls: true, decoded: true, error: undefined });
    assert.equal(await viewer.locator("#player").getAttribute("data-player"), "ivs");
    assert.equal(await viewer.locator("#placeholder").isVisible(), false);
    // Cards are per stream: this page has none of demo/main's, and gets its own.
    assert.equal(await viewer.locator("#cards .card").count(), 0);
    await publishUntilShown(client, viewer, event("new"), { topic: "spotter/v1/demo/video/events" });
    await viewer.screenshot({ path: path.join(artifacts, "viewer-video.png"), animations: "disabled" });
    await viewer.close();
  });

  test("after a bridge restart the page reconnects with its position and resyncs", async () => {
    const before = await page.locator("#cards .card").getAttribute("data-event-id");
    const sockets = socketUrls.length;
    await client.endAsync(true);
    client = null;
    await bridge.stop();
    await page.locator('#conn:not([data-state="live"])').waitFor(WAIT);
    assert.doesNotMatch(await page.locator("#conn").textContent(), /\blive\b/);

    bridge = await startBridge(setup);
    await page.locator('#conn[data-state="live"]').waitFor({ timeout: 30_000 });
    const reconnect = new URL(socketUrls.at(-1));
    assert.ok(socketUrls.length > sockets, "no new WebSocket was opened");
    assert.ok(reconnect.searchParams.get("epoch"), `reconnected without an epoch: ${reconnect}`);
    assert.match(reconnect.searchParams.get("offset") ?? "", /^\d+$/, `reconnected without an offset: ${reconnect}`);

    // The new bridge has heard of no agent session yet (its embedded broker kept nothing): it
    // cannot tell the page's position stale, so the page keeps its card until the agent speaks;
    // then the page shows exactly what the agent says is on screen, the old card gone.
    client = await publisher(setup.mqttUrl);
    await publishUntilShown(client, page, event("new"));
    await card(page, before).waitFor({ state: "detached", ...WAIT });
    assert.equal(await page.locator("#cards .card").count(), 1);
    await page.screenshot({ path: path.join(artifacts, "viewer-after-restart.png"), animations: "disabled" });
    assert.deepEqual(
      problems.filter((p) => !/WebSocket|ERR_CONNECTION_REFUSED/.test(p)),
      [],
      "errors other than the expected connection failures while the bridge was down",
    );
  });
});
