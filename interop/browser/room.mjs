// One chat page in Debian's headless Chromium (playwright-core), in a given room, for the
// tests of other participants (`synq chat`) sharing the room with a browser.
//   node room.mjs ROOM_LINK TEXT
// Prints `READY` once the page is connected (and so can relay the AI), then waits until its
// history shows TEXT and an AI answer is done, prints `ENTRIES {json}` (every entry's text
// as the page shows it, without its buttons) and exits.
import { chromium } from "playwright-core";

const [link, text] = process.argv.slice(2);
const T = { timeout: 60000 };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => console.error(`page error: ${e}`));
  await page.goto(link);
  await page.waitForFunction(() => document.getElementById("status")?.textContent === "Connected", null, T);
  console.log("READY");
  await page.waitForFunction(
    (t) => document.getElementById("textOut")?.textContent.includes(t)
      && document.querySelector("#textOut .entry.ai:not(.streaming)") !== null,
    text, T);
  // What a reader reads of each row: the quote, the name and the text, not the buttons.
  const entries = await page.$$eval("#textOut > div", (els) => els.map((e) => e.classList.contains("entry")
    ? [...e.querySelectorAll(".quote, .name, .text")].map((x) => x.textContent).join("")
    : e.textContent));
  console.log(`ENTRIES ${JSON.stringify(entries)}`);
} finally {
  await browser.close();
}
