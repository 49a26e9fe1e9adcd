#!/usr/bin/env node
// Interop: the browser build of @multisynq/client 1.1.0 (bundled/multisynq-client.min.js,
// from npm, written by nobody here) in Debian's headless Chromium against synq serve.
//
//   node counter.mjs http://127.0.0.1:PORT      (the synq serve to use as Multisynq's `box`)
//
// A small app of our own: a replicated counter that records who sent each increment. Its
// page is served by this script from 127.0.0.1 (an origin synq accepts), in two browser
// contexts (two users, no shared storage) that join one session with `box`; both send
// increments at the same time; each must see the other's, and both must end with the same
// history. Exit code 0 only if every check holds; the last stdout line is a JSON summary.
// Playwright comes from ../browser (scripts/test.sh installs both folders).

import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";
import { run, check } from "../browser/lib.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const synq = (process.argv[2] || "").replace(/\/$/, "");
if (!/^http:\/\/[^/]+$/.test(synq)) {
  console.error("usage: node counter.mjs http://HOST:PORT");
  process.exit(2);
}
const BUNDLE = join(HERE, "node_modules/@multisynq/client/bundled/multisynq-client.min.js");
const INCS = 10;
const PATIENCE = { timeout: 30000 };

// The app: everything replicated is in the model; the page exposes what a test reads.
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>synq × Multisynq counter</title>
<p id="count">…</p>
<script src="/multisynq-client.min.js"></script>
<script>
const q = new URLSearchParams(location.search);
window.errors = [];
window.addEventListener("error", (e) => window.errors.push(String(e.message)));

class Counter extends Multisynq.Model {
  init() {
    this.count = 0;
    this.history = [];
    this.subscribe("counter", "inc", this.increment);
  }
  increment({ by, n }) {
    this.count += 1;
    this.history.push([by, n, this.count]);
    this.publish("counter", "changed");
  }
}
Counter.register("Counter");

class CounterView extends Multisynq.View {
  constructor(model) {
    super(model);
    this.model = model;
    this.subscribe("counter", "changed", this.show);
    this.show();
  }
  show() { document.getElementById("count").textContent = String(this.model.count); }
  inc(n) { this.publish("counter", "inc", { by: q.get("who"), n }); }
}

Multisynq.Session.join({
  apiKey: "none",
  appId: "io.synq.interop.multisynq",
  name: q.get("session"),
  password: q.get("password"),
  box: q.get("box"),
  model: Counter,
  view: CounterView,
  autoSleep: false,
}).then((session) => {
  window.app = {
    inc: (n) => session.view.inc(n),
    state: () => ({ id: session.id, viewId: session.view.viewId, count: session.model.count,
                    history: JSON.parse(JSON.stringify(session.model.history)) }),
  };
}, (e) => window.errors.push("join failed: " + e));
</script>
`;

const server = createServer((req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path === "/") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(PAGE);
  } else if (path === "/favicon.ico") {
    res.writeHead(204).end();
  } else if (path === "/multisynq-client.min.js") {
    res.writeHead(200, { "content-type": "text/javascript" }).end(readFileSync(BUNDLE));
  } else {
    res.writeHead(404).end();
  }
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const pageBase = `http://127.0.0.1:${server.address().port}/`;

const summary = { ok: false, synq, multisynq: "1.1.0" };
await run(async (browser) => {
  const session = `counter-${randomBytes(4).toString("hex")}`;
  const password = randomBytes(9).toString("base64url");
  const pages = {};
  for (const who of ["A", "B"]) {
    // a context each: two users, as on two machines
    const context = await browser.newContext();
    const page = await context.newPage();
    const sockets = [];
    page.on("websocket", (ws) => sockets.push(ws.url()));
    page.on("pageerror", (e) => console.error(`[${who}] page error: ${e}`));
    page.on("console", (m) => { if (m.type() === "error") console.error(`[${who}] console: ${m.text()}`); });
    const query = new URLSearchParams({ who, session, password, box: `${synq}/` });
    await page.goto(`${pageBase}?${query}`);
    pages[who] = { page, sockets };
  }
  for (const [who, { page }] of Object.entries(pages)) {
    await page.waitForFunction(() => window.app || window.errors.length, null, PATIENCE);
    const errors = await page.evaluate(() => window.errors);
    check(errors.length === 0, `${who} joined without errors: ${errors}`);
  }
  const [a, b] = await Promise.all(["A", "B"].map((w) => pages[w].page.evaluate(() => window.app.state())));
  check(a.id === b.id, `A and B are in one session (${a.id} / ${b.id})`);
  check(a.viewId !== b.viewId, "A and B are two views");
  for (const [who, { sockets }] of Object.entries(pages)) {
    check(sockets.some((u) => u.startsWith(`${synq.replace(/^http/, "ws")}/reflector/`)),
      `${who}'s WebSocket goes to synq serve (${sockets})`);
  }

  // Both send at once; each must see both senders' increments, in one agreed order.
  await Promise.all(["A", "B"].map((who) => pages[who].page.evaluate(async (n) => {
    for (let i = 0; i < n; i++) {
      window.app.inc(i);
      await new Promise((r) => setTimeout(r, Math.random() * 30));
    }
  }, INCS)));
  for (const { page } of Object.values(pages)) {
    await page.waitForFunction((n) => window.app.state().count === n, 2 * INCS, PATIENCE);
  }
  const states = await Promise.all(["A", "B"].map((w) => pages[w].page.evaluate(() => window.app.state())));
  check(JSON.stringify(states[0].history) === JSON.stringify(states[1].history), "A and B agree on the history");
  for (const who of ["A", "B"]) {
    const mine = states[0].history.filter((e) => e[0] === who).map((e) => e[1]);
    check(JSON.stringify(mine) === JSON.stringify([...Array(INCS).keys()]),
      `every increment of ${who} reached both, once, in order: ${mine}`);
  }
  const shown = await Promise.all(["A", "B"].map((w) => pages[w].page.textContent("#count")));
  check(shown.every((t) => t === String(2 * INCS)), `both pages show ${2 * INCS}: ${shown}`);
  summary.ok = true;
  summary.session = a.id;
  summary.count = states[0].count;
  // run() exits when this returns: the summary goes out first.
  console.log(JSON.stringify(summary));
});
