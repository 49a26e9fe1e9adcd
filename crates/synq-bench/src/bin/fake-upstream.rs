//! fake-upstream: `synq_ai::testing::FakeUpstream` as a process, for tests written in other
//! languages (browser tests, OpenAI SDK checks): an OpenAI-compatible server on 127.0.0.1
//! that streams a fixed answer word by word. Prints `fake-upstream: listening on
//! http://ADDR/v1`, then serves until killed.
//!
//! `cargo run -p synq-bench --bin fake-upstream -- --reply "Hello there"`

#![forbid(unsafe_code)]
// Not model code: a test server (clippy.toml's determinism rules are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::Write as _;
use std::time::Duration;

use clap::Parser;
use synq_ai::testing::{FakeUpstream, Reply};

#[derive(Parser)]
#[command(about = "A scripted OpenAI-compatible server on 127.0.0.1 for tests")]
struct Args {
    /// The answer to every request, streamed one word per delta.
    #[arg(long, default_value = "Hello from the fake upstream.")]
    reply: String,
    /// Time to the first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    first_token_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let up = FakeUpstream::start().await;
    let words: Vec<String> = args
        .reply
        .split_inclusive(' ')
        .map(str::to_string)
        .collect();
    up.set_default(Reply::Delayed(
        Duration::from_millis(args.first_token_ms),
        words,
    ));
    println!("fake-upstream: listening on {}", up.base_url);
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
