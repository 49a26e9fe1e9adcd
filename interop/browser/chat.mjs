// The chat web app in Debian's headless Chromium, driven by playwright-core.
//   node chat.mjs BASE_URL SCREENSHOT_DIR
// Prints `STEP <name>` and waits for a line on stdin before going on, so that the Rust
// test that runs it can check the AI upstream between steps. Ends with `RESULT {json}`.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";

const [base, shots] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function step(name) {
  console.log(`STEP ${name}`);
  const { value, done } = await lines.next();
  if (done || value.trim() !== "ok") throw new Error(`the test runner stopped at ${name}: ${value}`);
}
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}
const T = { timeout: 30000 };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = {};
try {
  async function open(url) {
    const context = await browser.newContext({ viewport: { width: 390, height: 780 } }); // a phone
    const page = await context.newPage();
    page.on("pageerror", (e) => console.error(`page error: ${e}`));
    await page.goto(url);
    return { context, page };
  }
  async function connected(p) {
    await p.page.waitForFunction(() => document.getElementById("status")?.textContent === "Connected", null, T);
  }
  const aiEntries = (p) => p.page.$$eval("#textOut .entry.ai .text", (els) => els.map((e) => e.textContent));
  async function waitAi(p, text) {
    await p.page.waitForFunction(
      (t) => [...document.querySelectorAll("#textOut .entry.ai:not(.streaming) .text")].some((e) => e.textContent === t),
      text, T);
  }

  // 1. Opening / makes up a room and a password and puts them in the URL.
  const a = await open(base + "/");
  await connected(a);
  const url = a.page.url();
  const m = url.match(/\/\?q=([0-9a-z]{26})#pw=([0-9a-z]{26})$/);
  check(m, `the URL names a random room and password: ${url}`);
  check(m[1] !== m[2], "room and password differ");
  result.synced_ms = Number(await a.page.getAttribute("body", "data-synced-ms"));
  const b = await open(url);
  await connected(b);
  await a.page.waitForFunction(() => document.querySelector("#textOut .welcome")?.textContent.includes("AI is here, along with"), null, T);

  // 2. A post from one page appears in both; the AI's answer too, once. (With two people
  // in the room the AI answers only posts that address it.)
  await a.page.fill("#textIn", "AI, hello everyone");
  await a.page.press("#textIn", "Enter");
  for (const p of [a, b]) {
    await p.page.waitForFunction(() => [...document.querySelectorAll("#textOut .entry.post .text")].some((e) => e.textContent === "AI, hello everyone"), null, T);
    await waitAi(p, "Hello from the AI.");
    const answers = await aiEntries(p);
    check(answers.length === 1, `one AI answer, got ${JSON.stringify(answers)}`);
  }
  await step("answered");

  // 3. A third page joins; the elected page closes in the middle of an answer.
  const c = await open(url);
  await connected(c);
  const elected = await a.page.getAttribute("body", "data-elected");
  const pages = [a, b, c];
  const ids = await Promise.all(pages.map((p) => p.page.getAttribute("body", "data-view-id")));
  const k = ids.indexOf(elected);
  check(k >= 0, `the elected view ${elected} is one of the pages ${ids}`);
  const poster = pages[(k + 1) % 3];
  await poster.page.fill("#textIn", "@AI tell me a story");
  await poster.page.click("#sendButton");
  for (const p of pages) {
    await p.page.waitForFunction(() => [...document.querySelectorAll("#textOut .entry.ai.streaming .text")].some((e) => e.textContent === "Partial"), null, T);
  }
  await step("streaming");
  await pages[k].context.close();
  const rest = pages.filter((_, i) => i !== k);
  for (const p of rest) {
    await waitAi(p, "The restarted answer.");
    const answers = await aiEntries(p);
    check(answers.length === 2, `each answer exactly once: ${JSON.stringify(answers)}`);
    check(!answers.some((t) => t.includes("Partial")), "the partial answer is gone");
  }
  await step("failed-over");

  // 4. Markup in a post is shown as text and runs nothing.
  const evil = '@AI <img src=x onerror="window.__xss=1"><b>bold</b>';
  await rest[0].page.fill("#textIn", evil);
  await rest[0].page.press("#textIn", "Enter");
  for (const p of rest) {
    await p.page.waitForFunction((t) => [...document.querySelectorAll("#textOut .entry.post .text")].some((e) => e.textContent === t), evil, T);
    check(await p.page.$("#textOut img") === null, "no img element was created");
    check(await p.page.$("#textOut b") === null, "no b element was created");
    check(await p.page.evaluate(() => window.__xss) === undefined, "the onerror handler never ran");
  }
  await waitAi(rest[1], "The restarted answer.");

  // 5. The wrong password says so.
  const wrong = await open(url.replace(/#pw=.*$/, "#pw=not-the-password"));
  await wrong.page.waitForFunction(() => document.getElementById("status")?.textContent.startsWith("Wrong password"), null, T);
  check((await wrong.page.$$("#textOut .entry")).length === 0, "nothing of the room is shown");

  mkdirSync(shots, { recursive: true });
  await rest[1].page.screenshot({ path: `${shots}/chat.png`, fullPage: true });
  result.screenshot = `${shots}/chat.png`;
  console.log(`RESULT ${JSON.stringify(result)}`);
} catch (e) {
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
  // The stdin reader would keep the process alive.
  process.exit();
}
