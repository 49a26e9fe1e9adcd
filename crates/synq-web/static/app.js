// Loads the chat (Rust compiled to wasm32); its start function does the rest.
import init from "/synq_web.js";
init({ module_or_path: "/synq_web_bg.wasm" }).catch((e) => {
  const s = document.getElementById("status");
  if (s) { s.textContent = "This browser cannot run the chat: " + e; s.className = "error"; }
});
