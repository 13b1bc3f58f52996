// Drives the annotation page in headless Chromium (Playwright): a wrong token is refused, then
// tweets are labelled with a click and with keys, one label is undone and relabelled, one tweet
// skipped. Prints what it did as JSON for tests/annotate_page.rs to check against ClickHouse.
// Usage: NODE_PATH=…/node_modules node annotate.cjs URL TOKEN SCREENSHOT.png
// (scripts/setup.sh installs playwright-core and writes NODE_PATH into .state/env.sh.)
"use strict";
const { chromium } = require("playwright-core");
const fs = require("node:fs");

(async () => {
const [url, token, shot] = process.argv.slice(2);
const userDir = fs.mkdtempSync("/tmp/vaxpulse-chromium-");
const browser = await chromium.launchPersistentContext(userDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"],
  viewport: { width: 900, height: 560 },
});
const out = { steps: [] };
try {
  const page = browser.pages()[0] || await browser.newPage();
  await page.goto(url);
  // A wrong token is refused with a message, and the page stays on the sign-in form.
  await page.fill("#token", "not-a-token");
  await page.click("#go");
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("tokens file"));
  out.refused = await page.textContent("#status");
  await page.fill("#token", token);
  await page.click("#go");
  await page.waitForFunction(() => document.getElementById("card").dataset.tweet);
  const shown = () => page.evaluate(() => document.getElementById("card").dataset.tweet);
  const textShown = () => page.textContent("#text");
  out.annotator = await page.textContent("#who");
  // A tweet is shown as text: its markup stays characters, never elements.
  out.first_text = await textShown();
  out.elements_in_text = await page.$$eval("#text *", (els) => els.length);
  const act = async (what, how) => {
    const before = await shown();
    const text = await textShown();
    if (how === "click") await page.click("#" + what); else await page.keyboard.press(what);
    await page.waitForFunction((b) => document.getElementById("card").dataset.tweet !== b, before);
    out.steps.push({ tweet: before, action: how + ":" + what, text_seen: text.length > 0 });
  };
  await act("against", "click");
  await act("3", "key");
  await act("o", "key");
  // Undo brings the off-topic tweet back.
  const beforeUndo = await shown();
  await page.keyboard.press("u");
  await page.waitForFunction((b) => document.getElementById("card").dataset.tweet !== b, beforeUndo);
  out.undone = await shown();
  out.undo_status = await page.textContent("#status");
  await act("2", "key");
  await act("skip", "click");
  out.progress = await page.textContent("#progress");
  await page.screenshot({ path: shot });
} finally {
  await browser.close();
  fs.rmSync(userDir, { recursive: true, force: true });
}
console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
