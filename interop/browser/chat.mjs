// The chat web app in Debian's headless Chromium, driven by playwright-core: chatting,
// the people list, the AI answering exactly once, failover, markup shown as text.
//   node chat.mjs BASE_URL SCREENSHOT_DIR
// Prints `STEP <name>` and waits for a line on stdin before going on, so that the Rust
// test that runs it can check the AI upstream between steps. Ends with `RESULT {json}`.
import { mkdirSync } from "node:fs";
import { T, check, connected, myName, open, post, run, step, texts, waitAi, waitPeople, waitText } from "./lib.mjs";

const [base, shots] = process.argv.slice(2);

await run(async (browser) => {
  const result = {};
  const aiEntries = (p) => texts(p, "#textOut .entry.ai .text");

  // 1. Opening / makes up a room and a password and puts them in the URL.
  const a = await open(browser, base + "/");
  await connected(a);
  const url = a.page.url();
  const m = url.match(/\/\?q=([0-9a-z]{26})#pw=([0-9a-z]{26})$/);
  check(m, `the URL names a random room and password: ${url}`);
  check(m[1] !== m[2], "room and password differ");
  result.synced_ms = Number(await a.page.getAttribute("body", "data-synced-ms"));
  const b = await open(browser, url);
  await connected(b);
  await a.page.waitForFunction(() => document.querySelector("#textOut .welcome")?.textContent.includes("AI is here, along with"), null, T);
  // Both pages list both people.
  const [nameA, nameB] = [await myName(a), await myName(b)];
  for (const p of [a, b]) await waitPeople(p, [nameA, nameB]);

  // 2. A post from one page appears in both; the AI's answer too, once. (With two people
  // in the room the AI answers only posts that address it.)
  await post(a, "AI, hello everyone");
  for (const p of [a, b]) {
    await waitText(p, "#textOut .entry.post .text", "AI, hello everyone");
    await waitAi(p, "Hello from the AI.");
    const answers = await aiEntries(p);
    check(answers.length === 1, `one AI answer, got ${JSON.stringify(answers)}`);
  }
  await step("answered");

  // 3. A third page joins (everyone's people list grows); the elected page closes in the
  // middle of an answer (the others' lists shrink).
  const c = await open(browser, url);
  await connected(c);
  const nameC = await myName(c);
  const pages = [a, b, c];
  const names = [nameA, nameB, nameC];
  for (const p of pages) await waitPeople(p, names);
  const elected = await a.page.getAttribute("body", "data-elected");
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
    await waitPeople(p, names.filter((_, i) => i !== k));
    await waitText(p, "#textOut .entry.notice .text", `${names[k]} left`);
  }
  await step("failed-over");

  // 4. Markup in a post is shown as text and runs nothing.
  const evil = '@AI <img src=x onerror="window.__xss=1"><b>bold</b>';
  await post(rest[0], evil);
  for (const p of rest) {
    await waitText(p, "#textOut .entry.post .text", evil);
    check(await p.page.$("#textOut img") === null, "no img element was created");
    check(await p.page.$("#textOut b") === null, "no b element was created");
    check(await p.page.evaluate(() => window.__xss) === undefined, "the onerror handler never ran");
  }
  await waitAi(rest[1], "The restarted answer.");

  // 5. The wrong password says so.
  const wrong = await open(browser, url.replace(/#pw=.*$/, "#pw=not-the-password"));
  await wrong.page.waitForFunction(() => document.getElementById("status")?.textContent.startsWith("Wrong password"), null, T);
  check((await wrong.page.$$("#textOut .entry")).length === 0, "nothing of the room is shown");

  mkdirSync(shots, { recursive: true });
  await rest[1].page.screenshot({ path: `${shots}/chat.png`, fullPage: true });
  result.screenshot = `${shots}/chat.png`;
  console.log(`RESULT ${JSON.stringify(result)}`);
});
