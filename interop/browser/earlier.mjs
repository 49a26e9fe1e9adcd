// "Load earlier messages" in Debian's headless Chromium: past 100 entries the oldest go
// to the room's archive (a file of the room, encrypted), and a reader, also one who
// joins later, loads them back above the history.
//   node earlier.mjs BASE_URL SCREENSHOT_DIR
// Ends with `RESULT {json}`.
import { mkdirSync } from "node:fs";
import { T, check, connected, open, post, run, texts, waitText } from "./lib.mjs";

const [base, shots] = process.argv.slice(2);
const POSTS = 110;

await run(async (browser) => {
  const a = await open(browser, base + "/");
  await connected(a);
  // Nothing for the AI: only people's posts fill the history.
  await a.page.click("#aiSummary");
  await a.page.selectOption("#aiMode", "off");
  await a.page.waitForFunction(() => document.getElementById("aiMode").value === "off", null, T);
  check(await a.page.isHidden("#loadEarlier"), "nothing archived yet: no button");
  for (let i = 0; i < POSTS; i++) await post(a, `message ${i}`);
  await waitText(a, "#textOut .entry.post .text", `message ${POSTS - 1}`);
  // 1 join + 1 setting + 110 posts = 112 entries: the oldest 25 are in the archive.
  await a.page.waitForSelector("#loadEarlier:not([hidden])", T);
  const shown = await texts(a, "#textOut .entry .text");
  check(!shown.includes("message 0"), "message 0 left the history");
  check(shown.length <= 100, `at most 100 entries shown: ${shown.length}`);

  const load = async (p) => {
    await p.page.click("#loadEarlier");
    await waitText(p, "#textOut .entry.archived .text", "message 0");
    await p.page.waitForFunction(() => document.getElementById("loadEarlier").hidden, null, T);
    const all = await texts(p, "#textOut .entry .text");
    const posts = all.filter((t) => t.startsWith("message "));
    check(posts.length === POSTS, `every post, once: ${posts.length}`);
    check(posts.every((t, i) => t === `message ${i}`), "in order, the archive above the history");
  };
  await load(a);

  // Someone who joins now loads the same page, with their own copy of the key.
  const b = await open(browser, a.page.url());
  await connected(b);
  await b.page.waitForSelector("#loadEarlier:not([hidden])", T);
  await load(b);

  mkdirSync(shots, { recursive: true });
  await b.page.screenshot({ path: `${shots}/chat-earlier.png` });
  console.log(`RESULT ${JSON.stringify({ screenshot: `${shots}/chat-earlier.png` })}`);
});
