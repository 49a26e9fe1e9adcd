// The chat page's controls with two people in one room, in Debian's headless Chromium:
// the room's instructions for the AI, the AI's mode, the reader's scroll position, Stop
// during a streamed answer, Again, Reply (to a person, to the AI) and Reset's
// confirmation.
//   node controls.mjs BASE_URL SCREENSHOT_DIR
// Prints `STEP <name>` and waits for `ok` on stdin: the Rust test checks the AI upstream
// in between (request count, prompts, dropped calls). Ends with `RESULT {json}`.
import { mkdirSync } from "node:fs";
import { T, check, connected, myName, open, post, run, step, texts, waitAi, waitPeople, waitText } from "./lib.mjs";

const [base, shots] = process.argv.slice(2);

const INSTRUCTIONS = "Always answer like a pirate.";

await run(async (browser) => {
  const a = await open(browser, base + "/");
  await connected(a);
  const b = await open(browser, a.page.url());
  await connected(b);
  const both = [a, b];
  const [nameA, nameB] = [await myName(a), await myName(b)];
  for (const p of both) await waitPeople(p, [nameA, nameB]);
  const aiCount = async (p) => (await texts(p, "#textOut .entry.ai")).length;
  const lastEntry = (p) => p.page.$eval("#textOut .entry:last-of-type", (e) => ({ cls: e.className, text: e.querySelector(".text")?.textContent }));
  const openSettings = async (p) => {
    if (!(await p.page.$eval("#aiPanel", (d) => d.open))) await p.page.click("#aiSummary");
  };

  // 1. Instructions set on one page show on the other and go with the next question.
  await openSettings(a);
  check(await a.page.isDisabled("#saveInstructions"), "nothing to save yet");
  await a.page.fill("#instructionsIn", INSTRUCTIONS);
  check(!(await a.page.isDisabled("#saveInstructions")), "Save is offered once the field changed");
  await a.page.click("#saveInstructions");
  for (const p of both) {
    await waitText(p, "#textOut .entry.notice .text", `${nameA} set the room's instructions for the AI: ${INSTRUCTIONS}`);
    await p.page.waitForFunction((t) => document.getElementById("instructionsIn").value === t, INSTRUCTIONS, T);
    await p.page.waitForFunction(() => document.getElementById("aiSummary").textContent === "AI: auto · with instructions", null, T);
  }
  await a.page.waitForFunction(() => document.getElementById("saveInstructions").disabled, null, T);
  await post(b, "@AI where is the treasure?");
  for (const p of both) await waitAi(p, "Arr, under the palm tree.");
  await step("instructions");

  // 2. The AI off: both pages say so, and a post (even one addressing the AI) sends
  // nothing to the AI.
  await openSettings(b);
  await b.page.selectOption("#aiMode", "off");
  for (const p of both) {
    await p.page.waitForFunction(() => document.getElementById("aiMode").value === "off"
      && document.getElementById("privacy").textContent.includes("nothing is sent to the AI")
      && document.getElementById("textIn").placeholder.includes("the AI is off"), null, T);
    await waitText(p, "#textOut .entry.notice .text", `${nameB} set the AI to stay silent (nothing is sent to the AI)`);
  }
  await post(a, "@AI are you there?");
  for (const p of both) {
    await waitText(p, "#textOut .entry.post .text", "@AI are you there?");
    const last = await lastEntry(p);
    check(last.cls === "entry post" && last.text === "@AI are you there?", `no answer follows the post: ${JSON.stringify(last)}`);
    check(await aiCount(p) === 1, "still one answer");
    check((await p.page.$$("#textOut button.again")).length === 0, "no Again while the AI is off");
  }
  await step("off");

  // 3. A reader who scrolled up stays where they are when new posts come; one at the end
  // follows them.
  for (let i = 1; i <= 20; i++) await post(a, `line ${i}`);
  await waitText(b, "#textOut .entry.post .text", "line 20");
  const scroll = (p) => p.page.$eval("#textOut", (o) => ({ top: o.scrollTop, bottom: o.scrollHeight - o.scrollTop - o.clientHeight, overflow: o.scrollHeight > o.clientHeight + 100 }));
  let s = await scroll(b);
  check(s.overflow, `the history overflows: ${JSON.stringify(s)}`);
  check(s.bottom <= 24, `the reader at the end followed the posts: ${JSON.stringify(s)}`);
  // Scroll up, and wait until the page has seen it.
  await b.page.evaluate(() => new Promise((done) => {
    const o = document.getElementById("textOut");
    o.addEventListener("scroll", () => { if (o.scrollTop === 0) done(); });
    o.scrollTop = 0;
  }));
  await post(a, "one more line");
  for (const p of both) await waitText(p, "#textOut .entry.post .text", "one more line");
  s = await scroll(b);
  check(s.top === 0, `the reader who scrolled up stays there: ${JSON.stringify(s)}`);
  check(await b.page.isVisible("#newBelow"), "a button says there is more below");
  s = await scroll(a);
  check(s.bottom <= 24, `the poster, at the end, follows: ${JSON.stringify(s)}`);
  await b.page.click("#newBelow");
  await b.page.waitForFunction(() => { const o = document.getElementById("textOut"); return o.scrollHeight - o.scrollTop - o.clientHeight <= 24; }, null, T);
  check(!(await b.page.isVisible("#newBelow")), "the button goes once at the end");

  // 4. Always: with two people, a post that does not address the AI is answered.
  await a.page.selectOption("#aiMode", "always");
  for (const p of both) await p.page.waitForFunction(() => document.getElementById("aiMode").value === "always", null, T);
  await post(a, "no address here");
  for (const p of both) await waitAi(p, "Answered because the mode is always.");
  await step("always");
  await b.page.selectOption("#aiMode", "auto");
  for (const p of both) await p.page.waitForFunction(() => document.getElementById("aiMode").value === "auto", null, T);

  // 5. Stop during a streamed answer, from the page that is not calling the AI: the
  // partial text stays, marked, on both pages; the nodes of the other entries stay too
  // (a delta updates only its own entry).
  for (const p of both) {
    await p.page.evaluate(() => { window.__before = [...document.querySelectorAll("#textOut > .entry")]; });
    check(await p.page.isDisabled("#stopButton"), "Stop is disabled while nothing is answered");
  }
  await post(a, "@AI tell me a long story");
  for (const p of both) {
    await p.page.waitForFunction(() => {
      const last = document.querySelector("#textOut .entry:last-of-type");
      if (!last?.classList.contains("streaming")) return false;
      window.__answer = last;
      return true;
    }, null, T);
    await p.page.waitForFunction(() => window.__answer.querySelector(".text").textContent === "Once upon", null, T);
    check(!(await p.page.isDisabled("#stopButton")), "Stop is enabled while the AI answers");
  }
  await b.page.click("#stopButton");
  for (const p of both) {
    await p.page.waitForFunction((who) => window.__answer.isConnected
      && window.__answer.className === "entry ai stopped"
      && window.__answer.querySelector(".text").textContent === `Once upon (stopped by ${who})`, nameB, T);
    await p.page.waitForFunction(() => document.getElementById("stopButton").disabled, null, T);
    check(await p.page.evaluate(() => window.__before.every((e) => e.isConnected)), "the other entries' nodes were kept");
  }
  await step("stopped");

  // 6. Again, on the stopped answer: a new answer replaces it in place, on both pages.
  const answers = await aiCount(a);
  await a.page.click("#textOut .entry.ai.stopped button.again");
  for (const p of both) {
    await p.page.waitForFunction((who) => window.__answer.isConnected
      && window.__answer.className === "entry ai"
      && window.__answer.querySelector(".text").textContent === `The story, told again. (answered again at ${who}'s request)`, nameA, T);
    check(await aiCount(p) === answers, "the answer was replaced, not added");
  }
  await step("again");
  mkdirSync(shots, { recursive: true });
  await b.page.screenshot({ path: `${shots}/chat-controls.png`, fullPage: true });

  // 7. Reply: B replies to A's post. The bar over the input says to what; the post
  // carries it, and both pages quote it over the reply. A reply to a person is not put to
  // the AI (auto, two people here).
  const replyTo = (p, selector, text) => p.page.locator(selector, { hasText: text }).locator("button.reply").click();
  const replyBar = (p) => p.page.$eval("#replyBar", (bar) => bar.hidden ? null : bar.textContent);
  check(await replyBar(b) === null, "no reply bar before Reply");
  await replyTo(b, "#textOut .entry.post", "one more line");
  check(await replyBar(b) === `Replying to ${nameA}: one more line✕`, `the reply bar: ${await replyBar(b)}`);
  // ✕ cancels it.
  await b.page.click("#replyCancel");
  check(await replyBar(b) === null, "✕ closed the reply bar");
  await replyTo(b, "#textOut .entry.post", "one more line");
  await post(b, "agreed, one more");
  const quoteOf = (p, text) => p.page.waitForFunction(([t]) => {
    const row = [...document.querySelectorAll("#textOut .entry.post")].find((e) => e.querySelector(".text")?.textContent === t);
    return row?.querySelector(".quote")?.textContent ?? false;
  }, [text], T).then((h) => h.jsonValue());
  for (const p of both) {
    const quote = await quoteOf(p, "agreed, one more");
    check(quote === `↪ ${nameA}: one more line`, `the reply quotes A's post: ${quote}`);
  }
  check(await replyBar(b) === null, "the reply bar goes once the reply is sent");
  const last = await lastEntry(a);
  check(last.cls === "entry post" && last.text === "agreed, one more", `no answer to a reply to a person: ${JSON.stringify(last)}`);
  await step("replied");

  // 8. A reply to the AI's answer asks the AI, even with two people here in auto.
  await b.page.locator("#textOut .entry.ai button.reply").last().click();
  check(await replyBar(b) === "Replying to AI: The story, told again.✕", `the reply bar: ${await replyBar(b)}`);
  await post(b, "and then what happened?");
  for (const p of both) {
    const quote = await quoteOf(p, "and then what happened?");
    check(quote === "↪ AI: The story, told again.", `the reply quotes the answer: ${quote}`);
    await waitAi(p, "They lived happily ever after.");
  }
  await step("replied-to-ai");

  // 9. Reset asks first. Dismissed, nothing happens; accepted, the chat is cleared for both.
  const entriesBefore = await texts(a, "#textOut .entry .text");
  let question = "";
  b.page.once("dialog", (d) => { question = d.message(); d.dismiss(); });
  await b.page.click("#resetButton");
  check(question.includes("clears the chat for everyone"), `Reset asks: ${question}`);
  await post(b, "still here");
  for (const p of both) await waitText(p, "#textOut .entry.post .text", "still here");
  const entriesAfter = await texts(a, "#textOut .entry .text");
  check(JSON.stringify(entriesAfter) === JSON.stringify([...entriesBefore, "still here"]), "a dismissed Reset changes nothing");
  b.page.once("dialog", (d) => d.accept());
  await b.page.click("#resetButton");
  for (const p of both) {
    await p.page.waitForFunction((who) => {
      const all = [...document.querySelectorAll("#textOut .entry .text")].map((e) => e.textContent);
      return all.length === 1 && all[0] === `${who} reset the chat`;
    }, nameB, T);
  }

  console.log(`RESULT ${JSON.stringify({ screenshot: `${shots}/chat-controls.png` })}`);
});
