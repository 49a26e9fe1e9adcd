//! The synq AI chat in the browser. `synq serve` embeds the wasm32 build of this crate
//! (made by its build script) with `static/index.html`, and serves them at `/`.
//!
//! This crate only draws and moves bytes: the DOM (`app`), the AI gateway's streamed
//! answers over `fetch` (`ai`, with synq-openai's SSE decoder). What the page shows, the room link, names and the
//! relay loop are synq-chat's (`view`, `link`, `names`, `relay`).

#![forbid(unsafe_code)]
// Not model code: the browser page's I/O and rendering (clippy.toml's determinism rules are
// for model code; the chat's model is synq-chat's, run by synq-client).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

#[cfg(target_arch = "wasm32")]
mod ai;
#[cfg(target_arch = "wasm32")]
mod app;

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() {
    wasm_bindgen_futures::spawn_local(async {
        if let Err(e) = app::run().await {
            web_sys::console::error_1(&e.clone().into());
        }
    });
}
