// What the browser test scripts share: Debian's headless Chromium through playwright-core,
// pages at a phone's size, the step protocol with the Rust test that runs a script, and
// waiting for what a reader would see.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

export const T = { timeout: 30000 };

export function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

// Prints `STEP <name>` and waits for `ok` on stdin: the Rust test checks the AI upstream
// in between.
export async function step(name) {
  console.log(`STEP ${name}`);
  const { value, done } = await lines.next();
  if (done || value.trim() !== "ok") throw new Error(`the test runner stopped at ${name}: ${value}`);
}

// Runs `main(browser)` in a fresh Chromium; any failure makes the exit status 1.
export async function run(main) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    await main(browser);
  } catch (e) {
    console.error(e);
    process.exitCode = 1;
  } finally {
    await browser.close();
    // The stdin reader would keep the process alive.
    process.exit();
  }
}

// A page at a phone's size, in a context (cookies, storage) of its own.
export async function open(browser, url) {
  const context = await browser.newContext({ viewport: { width: 390, height: 780 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`page error: ${e}`));
  await page.goto(url);
  return { context, page };
}

export async function connected(p) {
  await p.page.waitForFunction(() => document.getElementById("status")?.textContent === "Connected", null, T);
}

// Waits until some element matching `selector` shows exactly `text`.
export async function waitText(p, selector, text) {
  await p.page.waitForFunction(
    ([s, t]) => [...document.querySelectorAll(s)].some((e) => e.textContent === t),
    [selector, text], T);
}

export const texts = (p, selector) => p.page.$$eval(selector, (els) => els.map((e) => e.textContent));

// Waits for a finished AI answer showing `text`.
export async function waitAi(p, text) {
  await waitText(p, "#textOut .entry.ai:not(.streaming) .text", text);
}

// Posts `text` from the input line (Enter).
export async function post(p, text) {
  await p.page.fill("#textIn", text);
  await p.page.press("#textIn", "Enter");
}

// This page's own name, from the people list.
export const myName = (p) => p.page.$eval("#people li.me", (e) => e.textContent);

// Waits until the people list shows exactly `names` (in any order).
export async function waitPeople(p, names) {
  await p.page.waitForFunction(
    (want) => {
      const shown = [...document.querySelectorAll("#people li")].map((e) => e.textContent).sort();
      return JSON.stringify(shown) === JSON.stringify([...want].sort());
    },
    names, T);
}
