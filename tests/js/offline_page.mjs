// One headless Chromium page (playwright-core) for the tests' page drivers (browser.mjs, phone.mjs), kept offline:
// every request to a host other than 127.0.0.1 is aborted and listed in `out.blocked`, and the page's errors
// (console errors, uncaught exceptions) are collected in `out.console`. The caller closes `context`.
import { chromium } from "playwright-core";

const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];

// spec: {chromium, profile}; options: more launchPersistentContext options (viewport, hasTouch...)
export async function openOfflinePage(spec, options = {}) {
  const context = await chromium.launchPersistentContext(spec.profile, {
    executablePath: spec.chromium, args: ARGS, headless: true, ...options,
  });
  const out = { blocked: [], console: [] };
  try {
    const page = await context.newPage();
    await context.route("**/*", (route) => {
      const url = new URL(route.request().url());
      if (url.hostname === "127.0.0.1" || url.protocol === "blob:" || url.protocol === "data:") return route.continue();
      out.blocked.push(url.href);
      return route.abort();
    });
    page.on("console", (m) => { if (m.type() === "error") out.console.push(m.text()); });
    page.on("pageerror", (e) => out.console.push(String(e)));
    return { context, page, out };
  } catch (e) {
    await context.close();
    throw e;
  }
}
