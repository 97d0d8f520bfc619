// Drives /dashboard in Debian's headless Chromium with playwright-core (from fixtures/): loads
// the page with a key and a wallet, waits until it is live and shows the wallet's score, prints
// "READY <score> after <the scores cursor it subscribed from>", then waits for an alert row of the given kind to be pushed and prints
// "ALERT <kind> <severity>"; saves a screenshot. Used by tests/tests/dashboard.rs.
//
// node tests/browser/dashboard.js <page url> <alert kind> <screenshot.png>
"use strict";
const path = require("path");
const { chromium } = require(path.join(__dirname, "../../fixtures/node_modules/playwright-core"));

(async () => {
  const [url, kind, shot] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage();
    page.on("console", (m) => process.stderr.write(`console: ${m.text()}\n`));
    await page.goto(url);
    await page.waitForSelector("#status.live", { timeout: 20000 });
    const score = await page.waitForSelector("#watch td.score", { timeout: 20000 });
    const cursors = JSON.parse(await page.evaluate(() => sessionStorage.getItem("cf_cursors")));
    console.log(`READY ${(await score.textContent()).trim()} after ${cursors.scores}`);
    const row = await page.waitForSelector(`#alerts tr.flash td.kind:text-is("${kind}")`, { timeout: 30000 });
    const severity = await row.evaluate((td) => td.nextElementSibling.textContent);
    console.log(`ALERT ${(await row.textContent()).trim()} ${severity.trim()}`);
    await page.screenshot({ path: shot, fullPage: true });
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
