// The viewer page's chat in real Chromium against a scripted socket (no bridge): what it sends, and what it shows for each thing the bridge can say.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { chromium } from "playwright-core";

import { WEB_DIR, launchBrowser, mugPng } from "./support.js";

const ORIGIN = "http://spotter.test";
const WAIT = { timeout: 10_000 };
const NOW = Date.now();
const msg = (id, uid, name, text, extra = {}) => ({
  id,
  user: { id: uid, name, moderator: false, guest: false, ...extra },
  text,
  at_ms: NOW - 60_000,
});
const HISTORY = [msg("m1", "u-ann", "Ann", "Is the mug dishwasher safe?"), msg("m2", "u-bo", "Bo", "love it")];

/**
 * A page whose files come from cloud-bridge/web and whose viewer socket is `script`: each
 * connection gets `{ws, sent, n}` (`sent`: the frames the page sent on it, parsed).
 */
async function scriptedPage(browser, { hash = "", guests = false, history = HISTORY, onConnect = () => {}, reducedMotion = "no-preference" } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: "en-US", reducedMotion });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(err.message));
  page.on("dialog", (d) => {
    errors.push(`dialog: ${d.message()}`);
    d.dismiss().catch(() => {});
  });
  await page.route(`${ORIGIN}/**`, (route) => {
    const { pathname } = new URL(route.request().url());
    if (pathname.startsWith("/watch/")) {
      return route.fulfill({ body: readFileSync(path.join(WEB_DIR, "index.html")), contentType: "text/html" });
    }
    if (pathname.startsWith("/static/") && !pathname.includes("/vendor/")) {
      const file = pathname.slice("/static/".length);
      const type = file.endsWith(".css") ? "text/css" : "text/javascript";
      return route.fulfill({ body: readFileSync(path.join(WEB_DIR, file)), contentType: type });
    }
    if (pathname.startsWith("/img/")) return route.fulfill({ body: mugPng(), contentType: "image/png" });
    if (pathname.startsWith("/api/streams/")) return route.fulfill({ json: { studio: "demo", stream: "main", video_url: null } });
    return route.fulfill({ status: 404, body: "not found" });
  });
  const connections = [];
  await page.routeWebSocket(/\/ws\/demo\/main/, (ws) => {
    const conn = { ws, sent: [], n: connections.length };
    connections.push(conn);
    ws.onMessage((m) => conn.sent.push(JSON.parse(m)));
    ws.send(JSON.stringify({ kind: "hello", protocol: 1, epoch: "ep", offset: 0, resync: false, onscreen: [], viewers: 1234, chat: { guests } }));
    ws.send(JSON.stringify({ kind: "chat_history", messages: history }));
    onConnect(conn);
  });
  await page.goto(`${ORIGIN}/watch/demo/main${hash}`);
  await page.locator('#conn[data-state="live"]').waitFor(WAIT);
  const send = (conn, frame) => conn.ws.send(JSON.stringify(frame));
  /** The frames of `kind` the page sent, over every connection so far. */
  const sent = (kind) => connections.flatMap((c) => c.sent.filter((f) => f.kind === kind));
  return { page, context, connections, errors, send, sent };
}

const waitUntil = async (what, check) => {
  const deadline = Date.now() + WAIT.timeout;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

const session = (user) => ({ kind: "session", user: { send: true, moderate: false, guest: false, ...user }, expires_at_ms: NOW + 3_600_000 });

describe("chat on the page (scripted socket)", () => {
  let browser;
  before(async () => {
    browser = await launchBrowser(chromium);
  });
  after(async () => {
    await browser?.close();
  });

  test("a token in the link is presented, kept for the tab and taken out of the address bar", async () => {
    const { page, connections, sent, send, errors } = await scriptedPage(browser, { hash: "#token=abc.def.ghi" });
    await waitUntil("the auth frame", () => sent("auth").length === 1);
    assert.deepEqual(sent("auth")[0], { kind: "auth", token: "abc.def.ghi" });
    assert.equal(new URL(page.url()).hash, "");
    assert.equal(await page.evaluate(() => sessionStorage.getItem("spotter.chat.token")), "abc.def.ghi");
    assert.equal(await page.locator("#viewer-count").textContent(), "1.2K");
    send(connections[0], session({ id: "u-al", name: "Al" }));
    await page.locator('#chat[data-mode="compose"]').waitFor(WAIT);
    assert.equal(await page.locator("#chat-messages li[data-id]").count(), 2, "the history");
    assert.match(await page.locator("#chat-who").textContent(), /Chatting as Al/);
    assert.equal(await page.locator(".msg-action").count(), 0);
    // Landmarks, headings and names a screen reader navigates by.
    for (const [role, opts] of [
      ["banner", {}],
      ["main", {}],
      ["heading", { level: 1, name: "Spotter live: demo / main" }],
      ["region", { name: "Live video" }],
      ["region", { name: "On screen now" }],
      ["region", { name: "Live chat" }],
      ["log", { name: "Live chat" }],
      ["textbox", { name: "Message" }],
      ["button", { name: "Send" }],
      ["status", {}],
    ]) {
      assert.ok((await page.getByRole(role, { exact: true, ...opts }).count()) >= 1, `no ${role} ${JSON.stringify(opts)}`);
    }
    // The skip link is the first stop and lands on the chat.
    await page.keyboard.press("Tab");
    assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to chat");
    await page.keyboard.press("Enter");
    assert.equal(await page.evaluate(() => document.activeElement.id), "chat-heading");

    // Typing counts characters; Enter sends; the message is pending until the bridge's chat.
    await page.locator("#chat-input").fill("hello there");
    assert.match(await page.locator("#chat-count").textContent(), /^11\/500/);
    await page.locator("#chat-input").press("Enter");
    await waitUntil("the say frame", () => sent("say").length === 1);
    const say = sent("say")[0];
    assert.equal(say.text, "hello there");
    assert.ok(say.nonce);
    await page.locator(".msg--pending", { hasText: "hello there" }).waitFor(WAIT);
    assert.equal(await page.locator("#chat-input").inputValue(), "");
    send(connections[0], { kind: "said", nonce: say.nonce, id: "m3" });
    send(connections[0], { kind: "chat", message: msg("m3", "u-al", "Al", "hello there") });
    await page.locator('#chat-messages li[data-id="m3"]').waitFor(WAIT);
    assert.equal(await page.locator(".msg--pending").count(), 0);

    // A reconnect presents the kept token again and replaces the list with the new history.
    await connections[0].ws.close({ code: 1012, reason: "restart" });
    await waitUntil("a second connection", () => connections.length === 2);
    await waitUntil("the second auth", () => connections[1].sent.some((f) => f.kind === "auth"));
    assert.equal(connections[1].sent.find((f) => f.kind === "auth").token, "abc.def.ghi");
    assert.equal(await page.locator("#chat-messages li[data-id]").count(), 2);
    assert.deepEqual(errors, []);
    await page.context().close();
  });

  test("a refusal is shown to the sender as an alert and their text comes back", async () => {
    const { page, connections, sent, send } = await scriptedPage(browser, { hash: "#token=t" });
    send(connections[0], session({ id: "u-al", name: "Al" }));
    await page.locator('#chat[data-mode="compose"]').waitFor(WAIT);
    await page.locator("#chat-input").fill("too fast");
    await page.locator("#chat-send").click();
    await waitUntil("the say frame", () => sent("say").length === 1);
    send(connections[0], { kind: "refused", nonce: sent("say")[0].nonce, code: "rate", message: "slow down: at most 1 message a second" });
    const alert = page.getByRole("alert");
    await alert.filter({ hasText: "Slow down: at most 1 message a second." }).waitFor(WAIT);
    assert.equal(await page.locator("#chat-input").inputValue(), "too fast");
    assert.equal(await page.locator(".msg--pending").count(), 0);
    // What the page can tell itself is refused without a frame.
    await page.locator("#chat-input").fill("   ");
    await page.locator("#chat-input").press("Enter");
    await alert.filter({ hasText: "Write something first." }).waitFor(WAIT);
    assert.equal(sent("say").length, 1);
    await page.context().close();
  });

  test("markup from the network is shown as text and never runs", async () => {
    const evil = `<img src=x onerror="window.__xss=1;alert(1)"><script>window.__xss=2</script>`;
    const { page, errors } = await scriptedPage(browser, {
      history: [msg("m1", "u-x", `<b onmouseover="window.__xss=3">Eve</b>`, evil)],
    });
    const li = page.locator('#chat-messages li[data-id="m1"]');
    await li.waitFor(WAIT);
    assert.equal(await li.locator(".msg-text").textContent(), evil);
    assert.equal(await li.locator(".msg-name").textContent(), `<b onmouseover="window.__xss=3">Eve</b>`);
    assert.equal(await page.locator("#chat-messages img, #chat-messages script, #chat-messages b").count(), 0);
    await li.hover();
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    assert.deepEqual(errors, []);
    await page.context().close();
  });

  test("a moderator deletes and bans from each message", async () => {
    const { page, connections, sent, send } = await scriptedPage(browser, { hash: "#token=mod" });
    send(connections[0], session({ id: "mod1", name: "Mia", moderate: true }));
    await page.locator('#chat[data-mode="compose"]').waitFor(WAIT);
    send(connections[0], { kind: "chat", message: msg("m5", "mod1", "Mia", "welcome", { moderator: true }) });
    await page.locator('li[data-id="m5"]').waitFor(WAIT);
    assert.equal(await page.locator('li[data-id="m5"]').getByRole("button", { name: /^Ban/ }).count(), 0, "no Ban on one's own message");
    await page.locator('li[data-id="m2"]').getByRole("button", { name: "Delete message from Bo" }).click();
    await page.locator('li[data-id="m1"]').getByRole("button", { name: "Ban 10 min (Ann)" }).click();
    await waitUntil("the frames", () => sent("delete").length === 1 && sent("ban").length === 1);
    assert.deepEqual(sent("delete")[0], { kind: "delete", id: "m2" });
    assert.deepEqual(sent("ban")[0], { kind: "ban", user: "u-ann", secs: 600 });
    send(connections[0], { kind: "chat_deleted", id: "m2" });
    await page.locator('li[data-id="m2"]').waitFor({ state: "detached", ...WAIT });
    send(connections[0], { kind: "banned", user: "u-ann", until_ms: NOW + 600_000 });
    await page.locator(".msg--notice", { hasText: /^Ann is banned until/ }).waitFor(WAIT);
    await page.context().close();
  });

  test("banned: the page says so, the socket's close is not retried with the token, and a reload remembers", async () => {
    const until = NOW + 600_000;
    const { page, connections, sent, send } = await scriptedPage(browser, { hash: "#token=bob" });
    send(connections[0], session({ id: "u-bob", name: "Bob" }));
    await page.locator('#chat[data-mode="compose"]').waitFor(WAIT);
    send(connections[0], { kind: "error", message: `banned until ${new Date(until).toISOString()}: spam` });
    await connections[0].ws.close({ code: 4003, reason: `banned until ${new Date(until).toISOString()}` });
    await page.locator('#chat[data-mode="banned"]').waitFor(WAIT);
    assert.match(await page.locator("#chat-notice").textContent(), /You are banned from this chat until/);
    assert.equal(await page.locator("#chat-input").isDisabled(), true);
    await waitUntil("the reconnect", () => connections.length === 2);
    await page.locator('#conn[data-state="live"]').waitFor(WAIT); // the cards go on
    assert.equal(sent("auth").length, 1, "the banned token was presented again");
    await page.reload();
    await page.locator('#chat[data-mode="banned"]').waitFor(WAIT);
    assert.equal(sent("auth").length, 1);
    await page.context().close();
  });

  test("a refused token is said so and dropped; without guests the chat is read-only", async () => {
    const { page, connections, send } = await scriptedPage(browser, { hash: "#token=forged" });
    send(connections[0], { kind: "error", message: "token refused: signature does not match" });
    await page.locator('#chat[data-mode="readonly"]').waitFor(WAIT);
    assert.match(await page.locator("#chat-notice").textContent(), /refused \(token refused: signature does not match\)/);
    assert.equal(await page.evaluate(() => sessionStorage.getItem("spotter.chat.token")), null);
    assert.equal(await page.locator("#chat-form").isVisible(), false);
    await page.context().close();
  });

  test("a guest picks a name, gets a token kept for the tab, and chats", async () => {
    const { page, connections, sent, send } = await scriptedPage(browser, { guests: true });
    await page.locator('#chat[data-mode="guest"]').waitFor(WAIT);
    await page.getByLabel("Pick a name to chat").fill("  Dana ");
    await page.getByRole("button", { name: "Join" }).click();
    await waitUntil("the guest frame", () => sent("guest").length === 1);
    assert.deepEqual(sent("guest")[0], { kind: "guest", name: "Dana" });
    send(connections[0], { kind: "refused", code: "bad_name", message: "that name is taken" });
    await page.locator("#chat-guest-error", { hasText: "That name is taken." }).waitFor(WAIT);
    send(connections[0], { ...session({ id: "guest-1", name: "Dana", guest: true }), token: "guest.jwt.sig" });
    await page.locator('#chat[data-mode="compose"]').waitFor(WAIT);
    assert.equal(await page.evaluate(() => sessionStorage.getItem("spotter.chat.token")), "guest.jwt.sig");
    await page.context().close();
  });

  test("cards enter newest first with an animation, and without one for viewers who ask for less motion", async () => {
    const card = (i) => ({
      type: "new",
      event_id: `e${i}`,
      seq: i,
      score: 0.9,
      captured_at_ms: NOW + i,
      product: { sku: `SKU-${i}`, name: `Product ${i}`, price: "9.50", currency: "EUR", url: "https://shop.example/p", image: "/img/p.png" },
    });
    for (const reducedMotion of ["no-preference", "reduce"]) {
      const { page, connections, send } = await scriptedPage(browser, { reducedMotion });
      for (const i of [1, 2, 3]) send(connections[0], { kind: "event", offset: i, card: card(i) });
      await page.locator("#cards .card").nth(2).waitFor(WAIT);
      assert.deepEqual(await page.locator("#cards .card").evaluateAll((cs) => cs.map((c) => c.dataset.sku)), ["SKU-3", "SKU-2", "SKU-1"]);
      const animation = await page.locator("#cards .card").first().evaluate((c) => getComputedStyle(c).animationName);
      assert.equal(animation, reducedMotion === "reduce" ? "none" : "card-in", reducedMotion);
      assert.equal(await page.locator("#cards .card").first().locator(".card-price").textContent(), "€9.50");
      await page.context().close();
    }
  });
});
