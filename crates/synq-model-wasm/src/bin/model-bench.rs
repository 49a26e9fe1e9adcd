//! Model steps per second, native: one JSON line. The wasm32 figure comes from
//! `node run.mjs <wasm> bench N` (see the README).

#![forbid(unsafe_code)]
// Not model code: it times the model with the wall clock (clippy.toml's determinism rules are
// for model code; the model it runs, synq-model's demo Room, is checked there).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Instant;

fn main() {
    let events: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    synq_model_wasm::demo_steps(1, 1000, 4);
    let t0 = Instant::now();
    let accepted = synq_model_wasm::demo_steps(1, events, 8);
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{{\"target\":\"native\",\"model\":\"demo Room\",\"events\":{events},\"accepted\":{accepted},\"seconds\":{s:.4},\"steps_per_s\":{}}}",
        (events as f64 / s).round()
    );
}
