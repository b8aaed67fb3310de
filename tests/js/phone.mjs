// Play the phone of `pipeline demo --lan` in headless Chromium (playwright-core): open the demo's URL, press
// "Measure this device", wait for the page to post its figures and show the server's answer; print one JSON object.
//
//   node phone.mjs SPEC.json      SPEC: {url, chromium, profile, timeout_ms}
//
// Every request to a host other than 127.0.0.1 is aborted and listed in `blocked` (the page must work offline).
import { readFileSync } from "node:fs";

import { openOfflinePage } from "./offline_page.mjs";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const { context, page, out } = await openOfflinePage(spec);
try {
  const resp = await page.goto(spec.url);
  out.pageStatus = resp.status();
  out.title = await page.title();
  await page.click("#measure");
  await page.waitForFunction(() => window.phone && window.phone.done, null, { timeout: spec.timeout_ms });
  out.phone = await page.evaluate(() => window.phone);
  out.status = await page.textContent("#status");
  out.verdict = await page.textContent("#verdict");
  out.userAgent = await page.evaluate(() => navigator.userAgent);
} finally {
  await context.close();
}
console.log(JSON.stringify(out));
