// How long the chat page takes from load to "Connected" (the key derivation dominates: 600,000
// PBKDF2 rounds), for each base URL given, in Debian's headless Chromium. One JSON line.
//   node join-time.mjs http://127.0.0.1:PORT http://LAN-IP:PORT
// 127.0.0.1 is a secure context (WebCrypto); a LAN address over plain http is not (wasm).
import { chromium } from "playwright-core";

const bases = process.argv.slice(2);
const runs = Number(process.env.RUNS || 3);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
const result = { bench: "browser_join", runs };
try {
  for (const base of bases) {
    const times = [];
    let secure;
    for (let i = 0; i < runs; i++) {
      const context = await browser.newContext();
      const page = await context.newPage();
      await page.goto(base + "/");
      await page.waitForFunction(() => document.getElementById("status")?.textContent === "Connected", null, { timeout: 60000 });
      times.push(Number(await page.getAttribute("body", "data-synced-ms")));
      secure = await page.evaluate(() => window.isSecureContext && !!crypto.subtle);
      await context.close();
    }
    times.sort((a, b) => a - b);
    result[base] = { webcrypto: secure, synced_ms: times };
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
