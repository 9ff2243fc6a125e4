// Unit tests of the chat's pure logic (cloud-bridge/web/chat.js) under Node: no browser, no socket, time passed in.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  BAN_KEY,
  CLOSE_BANNED,
  ChatState,
  TOKEN_KEY,
  banEndFromReason,
  checkDraft,
  checkName,
  parseChatMessage,
  takeFragmentToken,
} from "../../cloud-bridge/web/chat.js";

/** A sessionStorage stand-in. */
class Store {
  map = new Map();
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}

const NOW = 1_800_000_000_000;
const alice = { id: "u-alice", name: "Alice", send: true, moderate: false, guest: false };
const mod = { id: "mod1", name: "Mia", send: true, moderate: true, guest: false };

function message(id, user = "u-bob", text = `text of ${id}`, at = NOW) {
  return { id, user: { id: user, name: user.replace(/^u-/, ""), moderator: false, guest: false }, text, at_ms: at };
}

const ops = (out) => out.changes.map((c) => c.op);

/** A state through open, hello and session as `user` (null: no token). */
function connected(user = alice, { guests = false, store = new Store() } = {}) {
  const state = new ChatState({ storage: store });
  if (user) state.setToken("tok");
  const opened = state.opened(NOW);
  state.hello({ chat: { guests } });
  if (user) state.receive({ kind: "session", user, expires_at_ms: NOW + 3_600_000, token: null }, NOW);
  return { state, store, opened };
}

describe("parseChatMessage", () => {
  test("reads every chat kind of the contract", () => {
    const m = message("m1");
    assert.deepEqual(parseChatMessage({ kind: "chat", message: m }), { kind: "chat", message: m });
    assert.deepEqual(parseChatMessage({ kind: "chat_history", messages: [m, { id: 3 }, null] }).messages, [m]);
    assert.deepEqual(
      parseChatMessage({ kind: "session", user: { ...alice, guest: true }, expires_at_ms: 9, token: "g" }),
      { kind: "session", user: { ...alice, guest: true }, expires_at_ms: 9, token: "g", banned_until_ms: null },
    );
    assert.equal(parseChatMessage({ kind: "session", user: alice, banned_until_ms: 5 }).banned_until_ms, 5);
    assert.deepEqual(parseChatMessage({ kind: "said", nonce: "c1", id: "m1" }), { kind: "said", nonce: "c1", id: "m1" });
    assert.deepEqual(parseChatMessage({ kind: "chat_deleted", id: "m1" }), { kind: "chat_deleted", id: "m1" });
    assert.deepEqual(parseChatMessage({ kind: "banned", user: "u1", until_ms: 7 }), { kind: "banned", user: "u1", until_ms: 7 });
    assert.deepEqual(parseChatMessage({ kind: "refused", nonce: "c2", code: "rate", message: "slow down" }), {
      kind: "refused",
      nonce: "c2",
      code: "rate",
      message: "slow down",
    });
  });

  test("refuses malformed ones", () => {
    for (const bad of [
      null,
      { kind: "chat" },
      { kind: "chat", message: { ...message("m"), at_ms: -1 } },
      { kind: "chat", message: { ...message("m"), user: "bob" } },
      { kind: "chat", message: { ...message("m"), text: 5 } },
      { kind: "chat_history", messages: "x" },
      { kind: "session", user: { name: "x" } },
      { kind: "banned", user: "u1" },
      { kind: "said", nonce: "c1" },
      { kind: "nope" },
    ]) {
      assert.equal(parseChatMessage(bad), null, JSON.stringify(bad));
    }
  });
});

describe("checkDraft and checkName", () => {
  test("a message is trimmed, at most 500 characters counted as code points, without control characters", () => {
    assert.deepEqual(checkDraft("  hi  "), { ok: true, text: "hi" });
    assert.equal(checkDraft("   ").code, "empty");
    assert.equal(checkDraft("a".repeat(500)).ok, true);
    assert.equal(checkDraft("a".repeat(501)).code, "too_long");
    assert.equal(checkDraft("😀".repeat(500)).ok, true, "500 emoji are 1000 UTF-16 units but 500 characters");
    assert.equal(checkDraft("a\u0007b").code, "control_chars");
    assert.equal(checkDraft("a\u0085b").code, "control_chars");
    assert.equal(checkDraft("<script>alert(1)</script>").ok, true, "markup is text, the page never renders it");
  });

  test("a guest name is 1-32 characters without control characters", () => {
    assert.deepEqual(checkName(" Alice "), { ok: true, name: "Alice" });
    for (const bad of ["", "  ", "x".repeat(33), "a\nb"]) assert.equal(checkName(bad).ok, false, JSON.stringify(bad));
  });
});

describe("takeFragmentToken", () => {
  test("takes the token and keeps the rest of the fragment", () => {
    assert.deepEqual(takeFragmentToken("#token=a.b.c"), { token: "a.b.c", hash: "" });
    assert.deepEqual(takeFragmentToken("#x=1&token=a.b.c&y"), { token: "a.b.c", hash: "#x=1&y" });
    assert.deepEqual(takeFragmentToken("#token=a%2Eb"), { token: "a.b", hash: "" });
    assert.deepEqual(takeFragmentToken("#token="), { token: null, hash: "" }, "an empty one is still removed");
  });

  test("leaves a fragment without a token alone", () => {
    assert.equal(takeFragmentToken(""), null);
    assert.equal(takeFragmentToken("#"), null);
    assert.equal(takeFragmentToken("#chat"), null);
  });
});

describe("banEndFromReason", () => {
  test("reads the RFC 3339 end of a 4003 close", () => {
    assert.equal(banEndFromReason("banned until 2027-01-15T08:00:00Z"), Date.UTC(2027, 0, 15, 8));
    assert.equal(banEndFromReason("banned until 2027-01-15T08:00:00.250+00:00"), Date.UTC(2027, 0, 15, 8, 0, 0, 250));
    assert.equal(banEndFromReason("flooding"), null);
    assert.equal(banEndFromReason("banned until soon"), null);
  });
});

describe("ChatState", () => {
  test("presents the stored token on every open, and keeps a guest's token", () => {
    const store = new Store();
    const state = new ChatState({ storage: store });
    assert.equal(state.opened(NOW).send, null, "no token: nothing to present");
    state.hello({ chat: { guests: true } });
    assert.equal(state.view(NOW).mode, "guest");
    assert.deepEqual(state.guest(" Al ").send, { kind: "guest", name: "Al" });
    assert.equal(state.guest("").send, null);
    state.receive({ kind: "session", user: { ...alice, guest: true }, expires_at_ms: NOW + 1000, token: "guest-jwt" }, NOW);
    assert.equal(store.getItem(TOKEN_KEY), "guest-jwt");
    assert.equal(state.view(NOW).mode, "compose");
    assert.equal(state.view(NOW + 1000).mode, "guest", "the guest session ran out");

    state.closed(1006, "", NOW);
    assert.equal(state.view(NOW).mode, "connecting");
    assert.deepEqual(state.opened(NOW).send, { kind: "auth", token: "guest-jwt" }, "re-sent after a reconnect");
    assert.equal(state.view(NOW).mode, "connecting", "until the bridge answers");
  });

  test("without a token and without guests the chat is read-only", () => {
    const { state } = connected(null);
    assert.deepEqual(state.view(NOW), { mode: "readonly", notice: "Chat is read-only: sign in on the shop's site to take part." });
    assert.equal(state.say("hi", NOW).send, null);
  });

  test("a refused token is dropped and said so", () => {
    const store = new Store();
    const state = new ChatState({ storage: store });
    state.setToken("forged");
    assert.equal(state.opened(NOW).send.kind, "auth");
    state.hello({ chat: { guests: false } });
    state.error("token refused: signature does not match");
    assert.equal(store.getItem(TOKEN_KEY), null);
    assert.match(state.view(NOW).notice, /refused \(token refused: signature does not match\)/);
    assert.equal(state.opened(NOW).send, null, "not presented again");
    state.error("unknown variant `sya`");
    assert.equal(state.authRefused, "token refused: signature does not match", "later errors are not the token's");
  });

  test("history replaces the list, live messages append once, deletions remove", () => {
    const { state } = connected();
    let out = state.receive({ kind: "chat_history", messages: [message("m1"), message("m2")] }, NOW);
    assert.deepEqual(out.changes[0], { op: "reset", messages: [message("m1"), message("m2")] });
    assert.deepEqual(ops(state.receive({ kind: "chat", message: message("m3") }, NOW)), ["add"]);
    assert.deepEqual(ops(state.receive({ kind: "chat", message: message("m3") }, NOW)), [], "a duplicate");
    assert.deepEqual(state.receive({ kind: "chat_deleted", id: "m2" }, NOW).changes, [{ op: "remove", id: "m2" }]);
    assert.deepEqual(ops(state.receive({ kind: "chat", message: message("m2") }, NOW)), [], "a deleted one does not come back");
    out = state.receive({ kind: "chat_history", messages: [message("m3"), message("m4")] }, NOW);
    assert.deepEqual([...state.messages.keys()], ["m3", "m4"], "a reconnect's history replaces everything");
  });

  test("a history from a bridge that knows less keeps older messages and drops ones deleted within its span", () => {
    const { state } = connected();
    state.receive({ kind: "chat_history", messages: [message("m1", "u-bob", "a", NOW - 30), message("m2", "u-bob", "b", NOW - 20)] }, NOW);
    state.receive({ kind: "chat", message: message("m3", "u-bob", "c", NOW - 10) }, NOW);
    state.receive({ kind: "chat", message: message("m4", "u-bob", "d", NOW - 5) }, NOW);
    // Another replica, started after m2: it holds m3 and m5, and m4 was deleted meanwhile.
    const out = state.receive({ kind: "chat_history", messages: [message("m3", "u-bob", "c", NOW - 10), message("m5", "u-bob", "e", NOW)] }, NOW);
    assert.deepEqual([...state.messages.keys()], ["m1", "m2", "m3", "m5"]);
    assert.deepEqual(out.changes[0].messages.map((m) => m.id), ["m1", "m2", "m3", "m5"]);
    // An empty history (a replica that has seen no chat yet) takes nothing away.
    state.receive({ kind: "chat_history", messages: [] }, NOW);
    assert.deepEqual([...state.messages.keys()], ["m1", "m2", "m3", "m5"]);
  });

  test("keeps only the newest messages", () => {
    const state = new ChatState({ keep: 3 });
    state.receive({ kind: "chat_history", messages: [message("a"), message("b"), message("c")] }, NOW);
    assert.deepEqual(state.receive({ kind: "chat", message: message("d") }, NOW).changes, [
      { op: "add", message: message("d") },
      { op: "remove", id: "a" },
    ]);
  });

  test("an own message is pending until its chat arrives, in either order with said", () => {
    const { state } = connected();
    let out = state.say("  hello  ", NOW);
    assert.deepEqual(out.send, { kind: "say", text: "hello", nonce: "c1" });
    assert.deepEqual(ops(out), ["pending"]);
    assert.deepEqual(state.receive({ kind: "said", nonce: "c1", id: "m9" }, NOW).changes, []);
    out = state.receive({ kind: "chat", message: message("m9", alice.id, "hello") }, NOW);
    assert.deepEqual(ops(out), ["settle", "add"]);
    assert.equal(state.pending.size, 0);

    assert.equal(state.say("again", NOW).send.nonce, "c2");
    assert.deepEqual(ops(state.receive({ kind: "chat", message: message("m10", alice.id, "again") }, NOW)), ["add"]);
    assert.deepEqual(ops(state.receive({ kind: "said", nonce: "c2", id: "m10" }, NOW)), ["settle"]);
    assert.equal(state.pending.size, 0);
  });

  test("a refusal takes the pending message back to its writer", () => {
    const { state } = connected();
    state.say("too fast", NOW);
    const out = state.receive({ kind: "refused", nonce: "c1", code: "rate", message: "slow down: at most 1 message a second" }, NOW);
    assert.deepEqual(out.changes, [
      { op: "settle", nonce: "c1" },
      { op: "refused", code: "rate", message: "slow down: at most 1 message a second", text: "too fast" },
    ]);
    assert.equal(state.view(NOW).mode, "compose", "a rate refusal does not stop the chat");
    assert.equal(state.say("again", NOW + 500).send, null, "held a moment after a rate refusal, not sent to earn another");
    assert.equal(state.say("again", NOW + 500).changes[0].code, "rate");
    assert.equal(state.say("again", NOW + 1000).send.text, "again");
  });

  test("what the page can tell is wrong is refused without a round trip", () => {
    const { state } = connected();
    for (const [text, code] of [["", "empty"], ["x".repeat(501), "too_long"], ["a\u0000", "control_chars"]]) {
      const out = state.say(text, NOW);
      assert.equal(out.send, null);
      assert.equal(out.changes[0].code, code);
    }
    assert.equal(state.pending.size, 0);
  });

  test("a dropped socket gives back what was never accepted", () => {
    const { state } = connected();
    state.say("one", NOW);
    state.say("two", NOW);
    state.receive({ kind: "said", nonce: "c1", id: "m1" }, NOW);
    const out = state.closed(1006, "", NOW);
    assert.deepEqual(
      out.changes.filter((c) => c.op === "refused").map((c) => c.text),
      ["two"],
    );
    assert.deepEqual([...state.pending.keys()], ["c1"], "accepted: waits for the history");
    state.opened(NOW);
    assert.deepEqual(ops(state.receive({ kind: "chat_history", messages: [message("m1", alice.id, "one")] }, NOW)), ["reset", "settle"]);
  });

  test("banned: said so, no sending, no re-auth until the ban ends, across a reload", () => {
    const { state, store } = connected();
    const until = NOW + 600_000;
    state.receive({ kind: "banned", user: alice.id, until_ms: until }, NOW);
    assert.equal(state.view(NOW).mode, "banned");
    state.closed(CLOSE_BANNED, `banned until ${new Date(until).toISOString()}`, NOW);
    assert.deepEqual(JSON.parse(store.getItem(BAN_KEY)), { user: alice.id, until_ms: until });
    assert.equal(state.opened(NOW + 1000).send, null, "a banned tab does not present its token");
    state.hello({ chat: { guests: false } });
    assert.equal(state.view(NOW + 1000).mode, "banned");
    assert.equal(state.say("let me in", NOW + 1000).send, null);

    const reloaded = new ChatState({ storage: store });
    assert.equal(reloaded.opened(NOW + 2000).send, null, "a reload remembers the ban");
    assert.deepEqual(reloaded.opened(until + 1).send, { kind: "auth", token: "tok" }, "and forgets it when it ends");
  });

  test("a session that says its user is banned shows it at once; one that does not lifts a kept ban", () => {
    const store = new Store();
    store.setItem(TOKEN_KEY, "tok");
    const state = new ChatState({ storage: store });
    state.opened(NOW);
    state.hello({ chat: { guests: false } });
    const until = NOW + 600_000;
    state.receive(parseChatMessage({ kind: "session", user: alice, expires_at_ms: NOW + 3_600_000, banned_until_ms: until }), NOW);
    assert.equal(state.view(NOW).mode, "banned");
    assert.equal(state.say("hello?", NOW).send, null);
    assert.deepEqual(JSON.parse(store.getItem(BAN_KEY)), { user: alice.id, until_ms: until });
    // lifted early: the next session says nothing of a ban
    state.receive(parseChatMessage({ kind: "session", user: alice, expires_at_ms: NOW + 3_600_000 }), NOW + 1000);
    assert.equal(store.getItem(BAN_KEY), null);
    assert.equal(state.view(NOW + 1000).mode, "compose");
  });

  test("a ban learnt only from the close code still stops sending", () => {
    const { state } = connected();
    state.closed(CLOSE_BANNED, "banned until 2030-01-01T00:00:00Z", NOW);
    assert.equal(state.ban.until_ms, Date.UTC(2030, 0, 1));
    assert.equal(state.opened(NOW).send, null);
  });

  test("a refusal with code banned stops sending too", () => {
    const { state } = connected();
    state.say("hi", NOW);
    state.receive({ kind: "refused", nonce: "c1", code: "banned", message: "you are banned" }, NOW);
    assert.equal(state.view(NOW).mode, "banned");
  });

  test("someone else's ban: a moderator sees a notice, a viewer nothing", () => {
    const viewer = connected().state;
    assert.deepEqual(viewer.receive({ kind: "banned", user: "u-bob", until_ms: NOW + 1 }, NOW).changes, []);
    assert.equal(viewer.view(NOW).mode, "compose");
    const { state } = connected(mod);
    state.receive({ kind: "chat", message: message("m1", "u-bob") }, NOW);
    const [notice] = state.receive({ kind: "banned", user: "u-bob", until_ms: NOW + 1 }, NOW).changes;
    assert.equal(notice.op, "notice");
    assert.equal(notice.text, "bob is banned");
  });

  test("only a moderator's actions produce delete and ban frames; nobody bans themselves", () => {
    const viewer = connected().state;
    assert.equal(viewer.remove("m1").send, null);
    assert.equal(viewer.banUser("u-bob").send, null);
    const { state } = connected(mod);
    assert.deepEqual(state.remove("m1").send, { kind: "delete", id: "m1" });
    assert.deepEqual(state.banUser("u-bob").send, { kind: "ban", user: "u-bob", secs: 600 });
    assert.equal(state.banUser(mod.id).send, null);
  });

  test("a new token from the page's link drops a ban kept for the previous user", () => {
    const { state, store } = connected();
    state.closed(CLOSE_BANNED, "banned until 2030-01-01T00:00:00Z", NOW);
    state.setToken("someone else");
    assert.equal(store.getItem(BAN_KEY), null);
    assert.deepEqual(state.opened(NOW).send, { kind: "auth", token: "someone else" });
  });

  test("a bridge without chat (no hello.chat) says chat is off", () => {
    const state = new ChatState();
    state.opened(NOW);
    state.hello({ chat: null });
    assert.equal(state.view(NOW).mode, "off");
    state.hello({ chat: { guests: false } });
    assert.equal(state.view(NOW).mode, "readonly");
  });

  test("a session without send is read-only", () => {
    const { state } = connected({ ...alice, send: false });
    assert.equal(state.view(NOW).mode, "readonly");
  });
});
