// Drive the web bundle's page in headless Chromium (playwright-core), once, and print what it found as one JSON object.
//
//   node browser.mjs SPEC.json
//
// SPEC: {url, chromium, profile, model, screenshot?, upload?, images: [{file}], digits: [{label, pixels: [784]}], pixels: [[784]...]}
//   model: the preprocessing.json key that classifier.js is created with (createClassifier({model})) for images and pixels
//   images: golden files (under url/golden/) run through classifier.js's classify(<img>) inside the page
//   pixels: 28x28 MNIST test images run through classifyPixels (the model alone, no preprocessing)
//   digits: MNIST test digits traced on the drawing pad with real mouse events (the first also with touch events)
//   upload: an image file's path, given to the page's file input
// Every request to a host other than 127.0.0.1 is aborted and listed in `blocked` (the page must work offline).
import { readFileSync } from "node:fs";

import { openOfflinePage } from "./offline_page.mjs";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const { context, page, out } = await openOfflinePage(spec, { viewport: { width: 900, height: 800 }, hasTouch: true });
try {
  await page.goto(spec.url);
  await page.waitForFunction(() => window.demo && window.demo.latency, null, { timeout: 120_000 });
  out.latency = await page.evaluate(() => window.demo.latency);
  out.latencyText = await page.textContent("#latency");
  out.webgpuText = await page.textContent("#webgpu");

  // classifier.js imported as an embedding page would, with the model the golden set was made with (spec.model);
  // classify() on the golden files: <img> elements
  await page.evaluate(async (model) => {
    const { createClassifier } = await import("./classifier.js");
    window.embedded = await createClassifier({ model });
  }, spec.model);
  out.golden = await page.evaluate(async (files) => {
    const res = [];
    for (const f of files) {
      const img = new Image();
      img.src = `golden/${f}`;
      await img.decode();
      const r = await window.embedded.classify(img);
      res.push({ file: f, label: r.label, probabilities: r.probabilities, pixels: Array.from(r.pixels) });
    }
    return res;
  }, spec.images.map((i) => i.file));

  // the model alone on MNIST test images
  out.testSet = await page.evaluate(async (all) => {
    const res = [];
    for (const p of all) {
      const r = await window.embedded.classifyPixels(Uint8Array.from(p));
      res.push({ label: r.label, probabilities: r.probabilities });
    }
    return res;
  }, spec.pixels);

  // uploads: a text file is refused with one line; an image file is classified
  const settle = () => page.evaluate(() => window.demo.settled());
  await page.setInputFiles("#upload", { name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("not an image") });
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("notes.txt"));
  out.uploadText = await page.textContent("#status");
  if (spec.upload) {
    await page.setInputFiles("#upload", spec.upload);
    await page.waitForFunction((n) => Number(document.getElementById("label").dataset.seq) > n, 0);
    await settle();
    out.uploadLabel = (await page.textContent("#label")).trim();
  }

  // a blank pad: the page asks for a digit
  await page.click("#classify");
  out.emptyCanvas = await page.textContent("#status");

  // draw each digit: one stroke along each horizontal run of ink in each row (10 px per MNIST pixel), with the
  // mouse, and the first digit once more with touch events (Chromium's DevTools protocol), as a phone would
  const box = await page.locator("#pad").boundingBox();
  const cdp = await context.newCDPSession(page);
  const strokes = {
    mouse: async (x0, x1, y) => {
      await page.mouse.move(x0, y);
      await page.mouse.down();
      await page.mouse.move(x1, y, { steps: 2 });
      await page.mouse.up();
    },
    touch: async (x0, x1, y) => {
      await cdp.send("Input.dispatchTouchEvent", { type: "touchStart", touchPoints: [{ x: x0, y }] });
      await cdp.send("Input.dispatchTouchEvent", { type: "touchMove", touchPoints: [{ x: (x0 + x1) / 2, y }] });
      await cdp.send("Input.dispatchTouchEvent", { type: "touchMove", touchPoints: [{ x: x1, y }] });
      await cdp.send("Input.dispatchTouchEvent", { type: "touchEnd", touchPoints: [] });
    },
  };
  out.drawn = [];
  const runs = [...spec.digits.map((d) => [d, "mouse"]), ...(spec.digits.length ? [[spec.digits[0], "touch"]] : [])];
  for (const [d, input] of runs) {
    await page.click("#clear");
    for (let y = 0; y < 28; y++) {
      for (let x = 0; x < 28; x++) {
        if (d.pixels[y * 28 + x] < 128 || (x > 0 && d.pixels[y * 28 + x - 1] >= 128)) continue;
        let end = x;
        while (end + 1 < 28 && d.pixels[y * 28 + end + 1] >= 128) end++;
        await strokes[input](box.x + (x + 0.5) * box.width / 28, box.x + (end + 0.5) * box.width / 28,
          box.y + (y + 0.5) * box.height / 28);
      }
    }
    await settle();
    out.drawn.push({ label: d.label, input, shown: (await page.textContent("#label")).trim(),
      top3: await page.$$eval("#top3 li", (lis) => lis.map((li) => li.textContent)),
      ink: await page.evaluate(() => { // dark pixels on the pad: proof the strokes were drawn, not just classified
        const { data } = document.getElementById("pad").getContext("2d").getImageData(0, 0, 280, 280);
        let n = 0;
        for (let i = 0; i < data.length; i += 4) n += data[i] < 128;
        return n;
      }) });
    if (spec.screenshot && d === spec.digits[0] && input === "mouse") await page.screenshot({ path: spec.screenshot, fullPage: true });
  }
} finally {
  await context.close();
}
process.stdout.write(JSON.stringify(out));
