//! A wasm32 module with no JavaScript glue: plain exported functions over linear memory,
//! so Node's `WebAssembly` API is all it needs (no wasm-bindgen CLI to keep in step).

// The exports' `no_mangle` is the only unsafe code here; nothing else may be.
#![deny(unsafe_code)]

use synq_model::demo::{Room, room_log};
use synq_model::testing::final_hash;

/// Runs the demo log (`seed`, `events`, `views`) and returns a pointer to the 32-byte
/// snapshot hash (null if the snapshot failed). The buffer is leaked on purpose: the
/// module is called a handful of times per process.
#[expect(
    unsafe_code,
    reason = "an export of the wasm module needs its unmangled name"
)]
#[unsafe(no_mangle)]
pub extern "C" fn demo_hash(seed: u64, events: u32, views: u32) -> *const u8 {
    match run(seed, events, views) {
        Some(hash) => Box::leak(Box::new(hash)).as_ptr(),
        None => std::ptr::null(),
    }
}

/// Applies `events` events of the demo log and returns how many were accepted (so the
/// work cannot be optimized away); the caller times it.
#[expect(
    unsafe_code,
    reason = "an export of the wasm module needs its unmangled name"
)]
#[unsafe(no_mangle)]
pub extern "C" fn demo_steps(seed: u64, events: u32, views: u32) -> u32 {
    let log = room_log(seed, events as usize, views as usize);
    let (mut replica, _) = synq_model::Replica::<Room>::new(b"bench", 0);
    let mut accepted = 0;
    for (time, event) in log {
        accepted += u32::from(replica.apply(time, event).accepted);
    }
    accepted
}

/// The native side of the comparison.
pub fn run(seed: u64, events: u32, views: u32) -> Option<[u8; 32]> {
    let log = room_log(seed, events as usize, views as usize);
    final_hash::<Room>(b"wasm-check", log).ok().map(|h| h.0)
}
