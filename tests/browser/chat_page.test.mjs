// The chat page of `ferroformers serve` (GET /) in Debian's headless Chromium, driven by
// Playwright, against a server that scripts/browser_test.sh started on the model
// make_model.mjs writes. What the page shows is checked against the server's own
// non-streamed /v1/chat/completions for the same greedy request, character for character.
//
// env: FERROFORMERS_URL (the server, required), SCREENSHOT_DIR (default target/browser),
// CHROMIUM (default /usr/bin/chromium).

import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const BASE = process.env.FERROFORMERS_URL;
const SCREENSHOTS = resolve(process.env.SCREENSHOT_DIR ?? "target/browser");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/// Long enough for the Stop test to click early (seconds of work); short of the model's 4096
/// positions.
const LONG_REPLY = 4000;

let context;
let profile;

before(async () => {
  assert.ok(BASE, "set FERROFORMERS_URL to the server (scripts/browser_test.sh does)");
  mkdirSync(SCREENSHOTS, { recursive: true });
  profile = mkdtempSync(join(tmpdir(), "ferroformers-chromium-"));
  // A persistent context on a fresh profile folder: Playwright takes the profile this way
  // rather than as --user-data-dir.
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-quic",
    ],
  });
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

/// The server's answer to a non-streamed chat request: its text and token counts.
async function reference(body) {
  const response = await fetch(`${BASE}/v1/chat/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: false }),
  });
  const text = await response.text();
  assert.equal(response.status, 200, text);
  const answer = JSON.parse(text);
  const content = answer.choices[0].message.content;
  assert.equal(typeof content, "string", text);
  return { content, usage: answer.usage };
}

/// The `ferroformers_active_sequences` gauge of /metrics.
async function activeSequences() {
  const text = await (await fetch(`${BASE}/metrics`)).text();
  const match = text.match(/^ferroformers_active_sequences (\S+)$/m);
  assert.ok(match, "/metrics has ferroformers_active_sequences");
  return Number(match[1]);
}

/// A new tab on the chat page; it records the bodies the page posts to the chat route and
/// every script error or CSP refusal.
async function openPage() {
  const page = await context.newPage();
  const sent = [];
  const problems = [];
  page.on("request", (request) => {
    if (new URL(request.url()).pathname === "/v1/chat/completions") sent.push(request.postDataJSON());
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  const response = await page.goto(`${BASE}/`);
  assert.equal(response.status(), 200);
  return { page, sent, problems };
}

async function setSettings(page, { temperature, maxTokens }) {
  await page.click("#settings-toggle");
  await page.fill("#temperature", String(temperature));
  await page.fill("#max-tokens", String(maxTokens));
  await page.click("#settings-toggle");
}

const replies = (page) => page.locator("article.assistant");

/// Wait until the page's `count`-th reply has stopped streaming; returns its state and text.
async function settledReply(page, count) {
  await page.waitForFunction((n) => {
    const all = document.querySelectorAll("article.assistant");
    return all.length === n && all[n - 1].dataset.state !== "streaming";
  }, count, { timeout: 60_000 });
  const reply = replies(page).nth(count - 1);
  return {
    state: await reply.getAttribute("data-state"),
    text: await reply.locator(".content").evaluate((node) => node.textContent),
    note: await reply.locator(".note").evaluate((node) => node.textContent),
  };
}

/// Type into the message box the way a person does, then press Enter.
async function say(page, text) {
  const lines = text.split("\n");
  for (const [index, line] of lines.entries()) {
    if (index > 0) await page.keyboard.press("Shift+Enter");
    await page.locator("#prompt").pressSequentially(line);
  }
  await page.keyboard.press("Enter");
}

test("a greedy reply streams in and equals the non-streamed answer; the second turn sends the history", async () => {
  const { page, sent, problems } = await openPage();
  await setSettings(page, { temperature: 0, maxTokens: 24 });
  // Shift+Enter is a new line, not a send.
  const first = "Hello!\nWho are you?";
  await page.click("#prompt");
  await page.keyboard.type("Hello!");
  await page.keyboard.press("Shift+Enter");
  assert.equal(sent.length, 0, "Shift+Enter sends nothing");
  await page.keyboard.type("Who are you?");
  // Count the updates of the reply as it streams in.
  await page.evaluate(() => {
    window.replyUpdates = 0;
    new MutationObserver((records) => { window.replyUpdates += records.length; })
      .observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true });
  });
  await page.keyboard.press("Enter");
  const reply = await settledReply(page, 1);
  assert.equal(reply.state, "done", `the reply finished (note: ${reply.note})`);
  assert.equal(sent.length, 1);
  assert.deepEqual(sent[0].messages, [{ role: "user", content: first }]);
  assert.equal(sent[0].stream, true);
  assert.equal(sent[0].temperature, 0);
  assert.equal(sent[0].max_tokens, 24);
  const expected = (await reference({ messages: sent[0].messages, temperature: 0, max_tokens: 24 })).content;
  assert.ok(expected.length > 0, "the model says something");
  assert.equal(reply.text, expected);
  assert.ok(await page.evaluate(() => window.replyUpdates) > 3,
    "the reply was written piece by piece (more updates than the two new messages)");
  assert.equal(await page.locator("#prompt").inputValue(), "", "the box is emptied on send");

  await say(page, "Tell me more.");
  const second = await settledReply(page, 2);
  assert.equal(second.state, "done");
  assert.equal(sent.length, 2);
  const history = [
    { role: "user", content: first },
    { role: "assistant", content: expected },
    { role: "user", content: "Tell me more." },
  ];
  assert.deepEqual(sent[1].messages, history, "the second request carries the first turn");
  assert.equal(second.text, (await reference({ messages: history, temperature: 0, max_tokens: 24 })).content);

  // Text stays text: markup typed by the user (or written by the model) is not parsed.
  const markup = `<img src=x onerror="document.title='owned'"> <b>bold</b>`;
  await say(page, markup);
  const third = await settledReply(page, 3);
  const userTexts = await page.locator("article.user .content").allTextContents();
  assert.equal(userTexts.at(-1), markup);
  assert.equal(await page.locator("#messages img, #messages b").count(), 0);
  assert.notEqual(await page.title(), "owned");

  const desktop = join(SCREENSHOTS, "chat-desktop.png");
  await page.screenshot({ path: desktop });
  console.log(`screenshot: ${desktop}`);

  // The conversation survives a reload; New chat clears it, also for the next reload.
  await page.reload();
  assert.deepEqual(await page.locator("article .content").allTextContents(),
    [first, expected, "Tell me more.", second.text, markup, third.text]);
  await page.click("#new-chat");
  assert.equal(await page.locator("article").count(), 0);
  await page.reload();
  assert.equal(await page.locator("article").count(), 0);
  // The styles and the script ran under the server's Content-Security-Policy, refused nothing.
  assert.equal(await page.locator(".app").evaluate((node) => getComputedStyle(node).display), "flex");
  assert.deepEqual(problems, []);
  await page.close();
});

test("Stop cancels a long reply: the partial reply is kept as stopped, the server stops generating, Send works again", async () => {
  const { page, sent, problems } = await openPage();
  await setSettings(page, { temperature: 0, maxTokens: LONG_REPLY });
  const question = "Count to a thousand.";
  await say(page, question);
  await page.waitForFunction(() => {
    const content = document.querySelector("article.assistant .content");
    return content && content.textContent.length > 0;
  });
  assert.equal(await activeSequences(), 1, "the reply is still being generated when Stop is clicked");
  await page.click("#stop");
  const clicked = performance.now();
  const reply = await settledReply(page, 1);
  assert.equal(reply.state, "stopped");
  assert.equal(reply.note, "Stopped");
  assert.ok(reply.text.length > 0, "the first tokens stay on the page");
  assert.equal(await page.isEnabled("#send"), true, "Send is usable again");
  assert.equal(await page.isDisabled("#stop"), true, "Stop is off again");

  // The route drops the sequence when the browser leaves: the gauge returns to 0.
  let active = await activeSequences();
  while (active !== 0 && performance.now() - clicked < 30_000) {
    await new Promise((resolveLater) => setTimeout(resolveLater, 20));
    active = await activeSequences();
  }
  const stopSeconds = (performance.now() - clicked) / 1000;
  assert.equal(active, 0);

  // What the page showed is the start of the greedy reply, which goes on past it (asked for
  // again, a little longer than what was shown: greedy replies to more tokens extend those to
  // fewer). Its pace tells how long the whole reply would have kept the server busy.
  const started = performance.now();
  const longer = await reference({
    messages: [{ role: "user", content: question }],
    temperature: 0,
    max_tokens: reply.text.length + 16,
  });
  const secondsPerToken = (performance.now() - started) / 1000 / longer.usage.completion_tokens;
  assert.ok(longer.content.startsWith(reply.text), "what was shown is the start of the greedy reply");
  assert.ok(longer.content.length > reply.text.length, "and the reply was stopped before its end");
  const fullSeconds = secondsPerToken * LONG_REPLY;
  console.log(`Stop: ${reply.text.length} characters shown; active sequences 0 ${stopSeconds.toFixed(3)} s after the click; the whole reply would take about ${fullSeconds.toFixed(1)} s`);
  assert.ok(stopSeconds < fullSeconds / 2, "the server stopped generating when the page left");

  // The stopped reply is part of the conversation the next request sends.
  await setSettings(page, { temperature: 0, maxTokens: 8 });
  await say(page, "Thanks.");
  const next = await settledReply(page, 2);
  assert.equal(next.state, "done");
  assert.deepEqual(sent[1].messages, [
    { role: "user", content: question },
    { role: "assistant", content: reply.text },
    { role: "user", content: "Thanks." },
  ]);
  assert.deepEqual(problems, []);
  await page.close();
});

test("on a phone-sized screen the message box and Send fit without horizontal scrolling", async () => {
  const { page, problems } = await openPage();
  await page.setViewportSize({ width: 390, height: 844 });
  await setSettings(page, { temperature: 0, maxTokens: 80 });
  await say(page, "A phone-sized question with a long reply, please.");
  assert.equal((await settledReply(page, 1)).state, "done");
  for (const selector of ["#prompt", "#send", "#stop", "#new-chat", "#settings-toggle"]) {
    const box = await page.locator(selector).boundingBox();
    assert.ok(box, `${selector} is shown`);
    assert.ok(box.x >= 0 && box.x + box.width <= 390 && box.y >= 0 && box.y + box.height <= 844,
      `${selector} is inside the 390×844 screen: ${JSON.stringify(box)}`);
  }
  const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(widths[0] <= widths[1], `no horizontal scroll: scrollWidth ${widths[0]}, innerWidth ${widths[1]}`);
  const phone = join(SCREENSHOTS, "chat-phone.png");
  await page.screenshot({ path: phone });
  console.log(`screenshot: ${phone}`);
  await page.click("#settings-toggle");
  const settings = join(SCREENSHOTS, "chat-phone-settings.png");
  await page.screenshot({ path: settings });
  console.log(`screenshot: ${settings}`);
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth),
    "the settings fit too");
  assert.deepEqual(problems, []);
  await page.close();
});

test("a refused request is shown readably and gives the message back", async () => {
  const { page, sent } = await openPage();
  // Past OpenAI's range (0 to 2): the server answers 422 naming the field.
  await setSettings(page, { temperature: 3, maxTokens: 8 });
  await say(page, "Too hot?");
  const error = page.locator("#error");
  await error.waitFor({ state: "visible" });
  const shown = await error.textContent();
  const refused = await fetch(`${BASE}/v1/chat/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(sent[0]),
  });
  const body = await refused.json();
  assert.equal(refused.status, 422);
  assert.equal(shown, `The server answered 422: ${body.error.message}`);
  assert.match(shown, /temperature/);
  assert.equal(await error.getAttribute("role"), "alert");
  assert.equal(await page.locator("article").count(), 0, "the failed turn is taken out");
  assert.equal(await page.locator("#prompt").inputValue(), "Too hot?", "the message is back in the box");
  assert.equal(await page.isEnabled("#send"), true);
  await setSettings(page, { temperature: 0, maxTokens: 8 });
  await page.click("#send");
  assert.equal((await settledReply(page, 1)).state, "done");
  assert.equal(await error.isHidden(), true, "the error goes once a request succeeds");
  await page.close();
});

test("the API key of the settings goes with every request and stays for the next visit", async () => {
  const { page, problems } = await openPage();
  const authorizations = [];
  page.on("request", (request) => {
    if (new URL(request.url()).pathname.startsWith("/v1/")) {
      authorizations.push(request.headers().authorization);
    }
  });
  await page.click("#settings-toggle");
  await page.fill("#api-key", "test-key");
  await page.locator("#api-key").press("Tab"); // `change`: the model list is asked again
  await page.fill("#max-tokens", "4");
  await page.click("#settings-toggle");
  await say(page, "Hi");
  assert.equal((await settledReply(page, 1)).state, "done");
  // This server has no key, so it takes requests with or without one: what is checked here
  // is what the page sends (tests/serve_chat_page.rs checks the server's side).
  assert.deepEqual(authorizations, ["Bearer test-key", "Bearer test-key"]);
  const again = await openPage();
  assert.equal(await again.page.inputValue("#api-key"), "test-key");
  await again.page.click("#settings-toggle");
  await again.page.fill("#api-key", "");
  await again.page.locator("#api-key").press("Tab");
  assert.deepEqual([...problems, ...again.problems], []);
  await page.close();
  await again.page.close();
});
