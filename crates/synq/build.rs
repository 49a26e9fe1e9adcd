//! Builds the chat web app (crates/synq-web) for wasm32 and generates its JavaScript
//! bindings, so that `cargo build -p synq` alone yields a binary that serves the chat.
//!
//! The wasm build runs a nested cargo on its own target directory (`target/web`), so it
//! never waits on the lock of the outer build. Bindings come from the
//! `wasm-bindgen-cli-support` crate, pinned to the exact `wasm-bindgen` version of
//! synq-web: nothing to install besides the wasm32 target (which `rust-toolchain.toml`
//! asks rustup for).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.join("../..");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    for dir in [
        "synq-web",
        "synq-chat",
        "synq-client",
        "synq-model",
        "synq-relay",
        "synq-protocol",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("crates").join(dir).display()
        );
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    println!("cargo:rerun-if-env-changed=SYNQ_SKIP_WEB");

    let web_out = out.join("web");
    std::fs::create_dir_all(&web_out).expect("create OUT_DIR/web");
    if std::env::var_os("SYNQ_SKIP_WEB").is_some() {
        // For quick native-only builds: the page then says how to get the real one.
        placeholder(&web_out);
        return;
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("web");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--profile",
            "web",
            "--locked",
            "--target",
            "wasm32-unknown-unknown",
            "-p",
            "synq-web",
            "--lib",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        // The outer build's flags (e.g. -C target-cpu=native) are not for wasm32.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("run cargo for the web app");
    if !status.success() {
        panic!(
            "building the chat web app for wasm32 failed. If the target is missing, run \
             `rustup target add wasm32-unknown-unknown` (rust-toolchain.toml asks rustup for it). \
             To build without the web app, set SYNQ_SKIP_WEB=1."
        );
    }
    let wasm = target_dir.join("wasm32-unknown-unknown/web/synq_web.wasm");
    let mut bindgen = wasm_bindgen_cli_support::Bindgen::new();
    bindgen
        .input_path(&wasm)
        .web(true)
        .expect("web target")
        .typescript(false);
    bindgen
        .generate(&web_out)
        .unwrap_or_else(|e| panic!("wasm-bindgen on {}: {e}", wasm.display()));
    copy_static(&manifest.join("../synq-web/static"), &web_out);
    // Served as is to browsers that accept gzip (all of them): a third of the bytes.
    let wasm = std::fs::read(web_out.join("synq_web_bg.wasm")).expect("read the wasm module");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &wasm).expect("gzip");
    std::fs::write(
        web_out.join("synq_web_bg.wasm.gz"),
        gz.finish().expect("gzip"),
    )
    .expect("write");
}

fn copy_static(from: &Path, to: &Path) {
    for name in ["index.html", "style.css", "app.js"] {
        std::fs::copy(from.join(name), to.join(name))
            .unwrap_or_else(|e| panic!("copy {name}: {e}"));
    }
}

fn placeholder(to: &Path) {
    let page = "<!doctype html><title>synq</title><p>This synq was built with SYNQ_SKIP_WEB=1, \
                without the chat web app. Rebuild without it to get the chat.</p>";
    for (name, body) in [
        ("index.html", page),
        ("style.css", ""),
        ("app.js", ""),
        ("synq_web.js", ""),
    ] {
        std::fs::write(to.join(name), body).expect("write placeholder");
    }
    std::fs::write(to.join("synq_web_bg.wasm"), b"").expect("write placeholder");
    std::fs::write(to.join("synq_web_bg.wasm.gz"), b"").expect("write placeholder");
}
