//! The embedded backend through the real GGUF loader and generation loop, on the real
//! SmolLM2-135M-Instruct (Q4_1) GGUF that `scripts/fetch-test-model.sh` fetches.

// Not model code: a test of the AI backend (clippy.toml's determinism rules are for model
// code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use futures_util::StreamExt;
use synq_ai::local::gguf_tokenizer::StreamDecoder;
use synq_ai::local::{GgufTokenizer, LocalBackend, LocalOptions};
use synq_ai::{AiError, ChatBackend, ChatMessage, ChatRequest, collect_text};

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The test model: `SYNQ_TEST_MODEL` (or `SYNQ_TEST_GGUF`), else where the fetch script puts
/// it. Missing is a failure, not a skip: CI fetches it.
fn model_path() -> PathBuf {
    let path = std::env::var_os("SYNQ_TEST_MODEL")
        .or_else(|| std::env::var_os("SYNQ_TEST_GGUF"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let dir = std::env::var_os("SYNQ_TEST_MODEL_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    let home = std::env::var_os("HOME").unwrap_or_default();
                    PathBuf::from(home).join(".cache/synq/test-models")
                });
            dir.join(MODEL_FILE)
        });
    assert!(
        path.is_file(),
        "the test model {} is missing: run scripts/fetch-test-model.sh (or set SYNQ_TEST_MODEL to the .gguf)",
        path.display()
    );
    path
}

fn options() -> LocalOptions {
    LocalOptions {
        context_tokens: 2048,
        ..LocalOptions::default()
    }
}

/// One backend shared by the tests that only look at answers (loading takes a moment).
fn shared() -> &'static LocalBackend {
    static BACKEND: OnceLock<LocalBackend> = OnceLock::new();
    BACKEND
        .get_or_init(|| LocalBackend::load(&model_path(), options()).expect("the test model loads"))
}

fn capital_question() -> ChatRequest {
    ChatRequest::new(vec![
        ChatMessage::system("You are a helpful assistant."),
        ChatMessage::user("What is the capital of France?"),
    ])
}

#[tokio::test]
async fn answers_from_the_gguf_alone_and_stops_at_end_of_turn() {
    let backend = shared();
    let max_tokens = 100;
    let answer = backend
        .complete(capital_question().temperature(0.0).max_tokens(max_tokens))
        .await
        .expect("an answer");
    println!("answer: {answer:?}");
    // Other tests share this backend, so its last_stats may be theirs: count the answer's
    // tokens instead.
    let tokens = backend
        .tokenizer()
        .encode_literal(&answer)
        .expect("encode")
        .len();
    assert!(answer.contains("Paris"), "answer without Paris: {answer:?}");
    assert!(
        answer.split_whitespace().count() >= 3,
        "not a sentence: {answer:?}"
    );
    assert!(!answer.contains("<|im_end|>") && !answer.contains("<|im_start|>"));
    assert!(
        tokens < max_tokens as usize,
        "did not stop at the end-of-turn token: {tokens} tokens, {answer:?}"
    );
}

#[tokio::test]
async fn streams_deltas_that_add_up_to_the_complete_answer() {
    let backend = shared();
    let request = ChatRequest::new(vec![ChatMessage::user(
        "Name three colours of the rainbow.",
    )])
    .temperature(0.8)
    .seed(7)
    .max_tokens(40);
    let mut stream = backend.stream_chat(request.clone()).await.expect("stream");
    let mut deltas = Vec::new();
    while let Some(delta) = stream.next().await {
        deltas.push(delta.expect("delta"));
    }
    assert!(deltas.len() > 1, "one delta only: {deltas:?}");
    let complete = backend.complete(request).await.expect("complete");
    assert_eq!(deltas.concat(), complete);
}

#[tokio::test]
async fn same_seed_gives_the_same_text() {
    let backend = shared();
    let request = |seed| {
        ChatRequest::new(vec![ChatMessage::user(
            "Tell me a short story about a cat.",
        )])
        .temperature(0.8)
        .seed(seed)
        .max_tokens(30)
    };
    let a = backend.complete(request(42)).await.expect("a");
    let b = backend.complete(request(42)).await.expect("b");
    assert!(!a.is_empty());
    assert_eq!(a, b);
    // A different seed most likely samples another text; not asserted (it may not).
    let c = backend.complete(request(43)).await.expect("c");
    println!("seed 42: {a:?}\nseed 43: {c:?}");
}

fn assert_invalid_file(result: Result<LocalBackend, AiError>, path: &std::path::Path) {
    match result {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => {
            let message = e.to_string();
            println!("{message}");
            assert!(matches!(e, AiError::ModelUnavailable { .. }), "{e:?}");
            assert!(
                message.contains("not a valid, complete GGUF"),
                "unclear: {message}"
            );
            assert!(
                message.contains(&path.display().to_string()),
                "no path: {message}"
            );
        }
    }
}

#[test]
fn a_corrupt_or_truncated_file_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");

    // Random bytes.
    let corrupt = dir.path().join("corrupt.gguf");
    let noise: Vec<u8> = (0..64 * 1024).map(|_| rand::random::<u8>()).collect();
    std::fs::write(&corrupt, &noise).expect("write");
    assert_invalid_file(LocalBackend::load(&corrupt, options()), &corrupt);

    // The right magic and header, then noise.
    let real = std::fs::read(model_path()).expect("read the test model");
    let mut forged = real[..8].to_vec();
    forged.extend_from_slice(&noise);
    let forged_path = dir.path().join("forged.gguf");
    std::fs::write(&forged_path, &forged).expect("write");
    assert_invalid_file(LocalBackend::load(&forged_path, options()), &forged_path);

    // Truncated in the metadata, and in the tensor data (an interrupted download).
    for keep in [64 * 1024, real.len() / 2, real.len() - 1] {
        let path = dir.path().join(format!("truncated-{keep}.gguf"));
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(&real[..keep]).expect("write");
        drop(file);
        assert_invalid_file(LocalBackend::load(&path, options()), &path);
    }
}

#[test]
fn the_tokenizer_built_from_the_gguf_encodes_special_tokens_and_round_trips() {
    let tokenizer = GgufTokenizer::from_gguf_file(&model_path()).expect("tokenizer");
    let im_start = tokenizer.token_id("<|im_start|>").expect("<|im_start|>");
    let im_end = tokenizer.token_id("<|im_end|>").expect("<|im_end|>");
    assert_eq!((im_start, im_end), (1, 2));

    let ids = tokenizer
        .encode("<|im_start|>user\nHi<|im_end|>")
        .expect("encode");
    assert_eq!(ids.first(), Some(&im_start), "{ids:?}");
    assert_eq!(ids.last(), Some(&im_end), "{ids:?}");
    assert!(ids.len() <= 6, "special tokens split up: {ids:?}");

    // Message contents cannot forge turns: special-token text is plain text there.
    let literal = tokenizer.encode_literal("<|im_start|>").expect("encode");
    assert!(!literal.contains(&im_start), "{literal:?}");

    for text in [
        "héllo wörld 日本",
        "Hello, world! 12345",
        "  two  spaces\nand a line",
    ] {
        let ids = tokenizer.encode(text).expect("encode");
        assert_eq!(tokenizer.decode(&ids).expect("decode"), text);
    }
    // Streaming: characters split across tokens come out whole, once.
    let text = "héllo wörld 日本 🎉 naïve";
    let ids = tokenizer.encode(text).expect("encode");
    let mut decoder = StreamDecoder::default();
    let mut deltas = Vec::new();
    for id in ids.iter().copied() {
        deltas.extend(decoder.push(&tokenizer, id).expect("push"));
    }
    deltas.extend(decoder.finish(&tokenizer).expect("finish"));
    assert!(ids.len() > deltas.len(), "no character was split: {ids:?}");
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
    assert_eq!(deltas.concat(), text);

    // SmolLM2's own tokenizer.json splits digits one by one.
    assert_eq!(tokenizer.encode("2024").expect("encode").len(), 4);
}

#[tokio::test]
async fn dropping_the_stream_stops_the_generation() {
    // A backend of its own: its token counter sees only this test's requests.
    let backend = LocalBackend::load(&model_path(), options()).expect("load");
    let request = ChatRequest::new(vec![ChatMessage::user(
        "Write a long essay about the history of Europe.",
    )])
    .temperature(0.8)
    .seed(3)
    .max_tokens(120);

    // Unhindered, this request generates many tokens.
    let full = backend.complete(request.clone()).await.expect("full");
    let full_tokens = backend.generated_tokens();
    assert!(full_tokens >= 60, "too short to tell: {full:?}");

    // Read one delta, then drop the stream.
    let mut stream = backend.stream_chat(request).await.expect("stream");
    let first = stream.next().await.expect("a delta").expect("text");
    assert!(!first.is_empty());
    drop(stream);

    // Generations are serialised: once this one-token request is served, the cancelled
    // one has ended, and the counter tells how far it got.
    let one = ChatRequest::new(vec![ChatMessage::user("Hi")]).max_tokens(1);
    let _ = collect_text(backend.stream_chat(one).await.expect("second")).await;
    let second_tokens = backend.last_stats().expect("stats").tokens as u64;
    let cancelled_tokens = backend.generated_tokens() - full_tokens - second_tokens;
    assert!(
        cancelled_tokens < 30,
        "the dropped generation went on: {cancelled_tokens} of {full_tokens} tokens"
    );
}

#[tokio::test]
async fn long_conversations_lose_their_oldest_messages_and_max_tokens_is_honoured() {
    let context_tokens = 256;
    let backend = LocalBackend::load(
        &model_path(),
        LocalOptions {
            context_tokens,
            ..LocalOptions::default()
        },
    )
    .expect("load");
    let mut messages = vec![ChatMessage::system("You are a helpful assistant.")];
    for i in 0..20 {
        messages.push(ChatMessage::user(format!(
            "Message {i}: tell me something about the number {i}."
        )));
        messages.push(ChatMessage::assistant(format!(
            "The number {i} is a number that comes after {}.",
            i.max(1) - 1
        )));
    }
    messages.push(ChatMessage::user("What is the capital of France?"));

    let (prompt, max_new) = backend.prompt_tokens(&messages, 64).expect("prompt");
    assert!(
        prompt.len() + 64 <= context_tokens,
        "{} tokens",
        prompt.len()
    );
    assert_eq!(max_new, 64);
    let text = backend
        .tokenizer()
        .inner()
        .decode(&prompt, false)
        .expect("decode");
    assert!(text.starts_with("<|im_start|>system\nYou are a helpful assistant."));
    assert!(text.ends_with("What is the capital of France?<|im_end|>\n<|im_start|>assistant\n"));
    assert!(!text.contains("Message 0:"), "the oldest message was kept");

    let request = ChatRequest::new(messages).temperature(0.0).max_tokens(3);
    let answer = backend.complete(request).await.expect("answer");
    let stats = backend.last_stats().expect("stats");
    assert_eq!(stats.tokens, 3, "{answer:?}");
    assert!(stats.prompt_tokens + 3 <= context_tokens);

    // A single message too long for the context is refused, not cut.
    let huge = ChatRequest::new(vec![ChatMessage::user("word ".repeat(400))]);
    match backend.complete(huge).await {
        Err(AiError::InvalidRequest(message)) => assert!(message.contains("context"), "{message}"),
        other => panic!("a prompt longer than the context: {other:?}"),
    }
}

#[tokio::test]
async fn the_default_model_comes_from_the_hugging_face_cache_and_offline_says_what_to_do() {
    let model = synq_ai::local::DEFAULT_MODEL;
    let home = tempfile::tempdir().expect("tempdir");
    // SAFETY: no other test of this binary reads these variables, and Rust's own
    // environment accesses are synchronised.
    unsafe {
        std::env::set_var("HF_HOME", home.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }

    // Not cached, offline: a clear error saying how to do without (in general terms: the
    // flags are the binary's to name).
    match synq_ai::local::fetch_model(model, None).await {
        Err(e @ AiError::ModelUnavailable { .. }) => {
            let message = e.to_string();
            assert!(message.contains(model.file), "{message}");
            assert!(message.contains("local model file"), "{message}");
            assert!(message.contains("OpenAI-compatible service"), "{message}");
            assert!(!message.contains("--ai"), "{message}");
        }
        other => panic!("offline without the model: {other:?}"),
    }

    // Cached (the hub's layout under HF_HOME): found without the network.
    let repo = home
        .path()
        .join("hub")
        .join(format!("models--{}", model.repo.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
    std::fs::write(repo.join("refs/main"), commit).expect("ref");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).expect("mkdir");
    std::fs::write(snapshot.join(model.file), b"GGUF").expect("file");
    let path = synq_ai::local::fetch_model(model, None)
        .await
        .expect("the cached model");
    assert_eq!(path, snapshot.join(model.file));
}

/// Writes a GGUF with the test model's vocabulary, the given architecture metadata and
/// tensors (f32, random): small models of other architectures, made here.
fn write_gguf(
    path: &std::path::Path,
    metadata: Vec<(&str, gguf_file::Value)>,
    tensors: Vec<(String, Tensor)>,
) {
    let real = {
        let mut file = std::fs::File::open(model_path()).expect("open");
        gguf_file::Content::read(&mut file).expect("the test model's header")
    };
    let mut all: Vec<(&str, gguf_file::Value)> = metadata;
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.bos_token_id",
    ] {
        all.push((key, real.metadata[key].clone()));
    }
    all.push((
        "tokenizer.ggml.model",
        gguf_file::Value::String("gpt2".into()),
    ));
    let tensors: Vec<(String, QTensor)> = tensors
        .into_iter()
        .map(|(name, t)| {
            (
                name,
                QTensor::quantize(&t, GgmlDType::F32).expect("quantize"),
            )
        })
        .collect();
    let metadata: Vec<(&str, &gguf_file::Value)> = all.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).expect("create");
    gguf_file::write(&mut file, &metadata, &tensors).expect("write the GGUF");
}

#[tokio::test]
async fn a_qwen2_model_loads_and_generates_and_other_architectures_are_named() {
    use gguf_file::Value::{F32, String as Str, U32};
    let dir = tempfile::tempdir().expect("tempdir");
    let (hidden, heads, kv_heads, ffn, layers) = (64usize, 4usize, 2usize, 128usize, 2usize);
    let vocab = 49152;
    let kv = hidden / heads * kv_heads;
    let randn = |shape: &[usize]| Tensor::randn(0f32, 0.05, shape, &Device::Cpu).expect("randn");
    let ones = |n: usize| Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).expect("ones");
    let mut tensors = vec![
        ("token_embd.weight".to_string(), randn(&[vocab, hidden])),
        ("output_norm.weight".to_string(), ones(hidden)),
    ];
    for i in 0..layers {
        let p = format!("blk.{i}");
        tensors.extend([
            (format!("{p}.attn_q.weight"), randn(&[hidden, hidden])),
            (format!("{p}.attn_k.weight"), randn(&[kv, hidden])),
            (format!("{p}.attn_v.weight"), randn(&[kv, hidden])),
            (format!("{p}.attn_q.bias"), randn(&[hidden])),
            (format!("{p}.attn_k.bias"), randn(&[kv])),
            (format!("{p}.attn_v.bias"), randn(&[kv])),
            (format!("{p}.attn_output.weight"), randn(&[hidden, hidden])),
            (format!("{p}.ffn_gate.weight"), randn(&[ffn, hidden])),
            (format!("{p}.ffn_up.weight"), randn(&[ffn, hidden])),
            (format!("{p}.ffn_down.weight"), randn(&[hidden, ffn])),
            (format!("{p}.attn_norm.weight"), ones(hidden)),
            (format!("{p}.ffn_norm.weight"), ones(hidden)),
        ]);
    }
    let qwen2 = dir.path().join("tiny-qwen2.gguf");
    write_gguf(
        &qwen2,
        vec![
            ("general.architecture", Str("qwen2".into())),
            ("qwen2.attention.head_count", U32(heads as u32)),
            ("qwen2.attention.head_count_kv", U32(kv_heads as u32)),
            ("qwen2.embedding_length", U32(hidden as u32)),
            ("qwen2.context_length", U32(512)),
            ("qwen2.block_count", U32(layers as u32)),
            ("qwen2.attention.layer_norm_rms_epsilon", F32(1e-6)),
            ("qwen2.rope.freq_base", F32(1e6)),
            ("tokenizer.ggml.pre", Str("qwen2".into())),
        ],
        tensors,
    );
    let backend = LocalBackend::load(&qwen2, options()).expect("the qwen2 model loads");
    assert_eq!(backend.context_tokens(), 512);
    assert!(matches!(
        backend.template(),
        synq_ai::local::ChatTemplate::ChatMl { .. }
    ));
    // Qwen2's pre-tokenizer (single digits, NFC) round-trips too.
    let text = "Qwen2: 12345 héllo";
    let ids = backend.tokenizer().encode(text).expect("encode");
    assert_eq!(backend.tokenizer().decode(&ids).expect("decode"), text);
    // Random weights: the text means nothing, but the generation loop runs.
    let request = ChatRequest::new(vec![ChatMessage::user("Hi")])
        .temperature(0.0)
        .max_tokens(5);
    backend.complete(request).await.expect("generation");
    let stats = backend.last_stats().expect("stats");
    assert!(stats.prompt_tokens > 3 && stats.tokens <= 5, "{stats:?}");

    let gemma = dir.path().join("tiny-gemma.gguf");
    write_gguf(
        &gemma,
        vec![("general.architecture", Str("gemma2".into()))],
        Vec::new(),
    );
    match LocalBackend::load(&gemma, options()) {
        Err(e @ AiError::ModelUnavailable { .. }) => {
            let message = e.to_string();
            assert!(message.contains("\"gemma2\""), "{message}");
            assert!(message.contains("supported: llama, qwen2"), "{message}");
        }
        other => panic!("a gemma2 model: {other:?}"),
    }
}

/// A room's next request repeats its previous prompt: it is read only from where it
/// differs, and answers as if read from scratch.
#[tokio::test]
async fn a_follow_up_prompt_reads_only_what_is_new_and_answers_the_same() {
    let backend = LocalBackend::load(&model_path(), options()).expect("the test model loads");
    let system = ChatMessage::system("You are a helpful assistant in a group chat.");
    let transcript = "The chat so far:\nAnn: We are planning a trip to Italy.\nBo: I would like to see Rome and Florence.\n";
    let ask = |extra: &str, question: &str| {
        ChatRequest::new(vec![
            system.clone(),
            ChatMessage::user(format!("{transcript}{extra}\nAnn now writes: {question}")),
        ])
        .temperature(0.0)
        .max_tokens(24)
    };
    backend
        .complete(ask("", "AI, what is the capital of Italy?"))
        .await
        .expect("first answer");
    let follow_up = ask(
        "Ann: AI, what is the capital of Italy?\nAI: Rome.\n",
        "AI, and how far is Florence from Rome?",
    );
    let warm = backend.complete(follow_up.clone()).await.expect("answer");
    let stats = backend.last_stats().expect("stats");
    assert!(
        stats.cached_tokens > 30 && stats.cached_tokens < stats.prompt_tokens,
        "{stats:?}"
    );
    backend.clear_prompt_cache();
    let cold = backend.complete(follow_up.clone()).await.expect("answer");
    assert_eq!(backend.last_stats().expect("stats").cached_tokens, 0);
    assert_eq!(warm, cold, "the cached prefix changed the answer");

    // Without a budget for it, nothing is kept.
    let uncached = LocalBackend::load(
        &model_path(),
        LocalOptions {
            prompt_cache_bytes: 0,
            ..options()
        },
    )
    .expect("the test model loads");
    uncached.complete(follow_up.clone()).await.expect("answer");
    uncached.complete(follow_up).await.expect("answer");
    assert_eq!(uncached.last_stats().expect("stats").cached_tokens, 0);
}

/// A group chat's prompt shows each person's message as "Name: text"; the test model,
/// greedy, opens its answer with such a label ("Cy: The capital of Japan is Tokyo.") and
/// would speak as Cy. The embedded model draws such a start again instead, so no label is
/// ever streamed.
#[tokio::test]
async fn an_answer_never_begins_in_a_persons_name() {
    let backend = LocalBackend::load(&model_path(), options()).expect("the test model loads");
    let request = ChatRequest::new(vec![
        ChatMessage::system(
            "You are AI, the assistant in a group chat with several people. People in the \
             chat now: Ann, Cy. You write only your own messages, as AI: never write a line \
             for anyone else, never start with a name and a colon, and never answer a \
             question meant for another person in their place. Reply briefly (one to three \
             sentences unless asked for more) in plain text: no Markdown, no lists, no code \
             fences.",
        ),
        ChatMessage::user("Cy: Planning a trip to Japan in spring!"),
        ChatMessage::user("Ann: AI, what's the capital of Japan?"),
    ])
    .temperature(0.0)
    .max_tokens(40);
    let mut stream = backend.stream_chat(request).await.expect("stream");
    let mut deltas = Vec::new();
    while let Some(delta) = stream.next().await {
        deltas.push(delta.expect("delta"));
    }
    let answer = deltas.concat();
    println!("answer: {answer:?}, deltas {deltas:?}");
    let stats = backend.last_stats().expect("stats");
    assert!(
        stats.redraws >= 1,
        "the model did not begin with a label here, so this test shows nothing: {answer:?}"
    );
    // No label at all: refused "Cy:", this model writes "Cyr:".
    let start = answer.trim_start();
    let head = start.split(':').next().unwrap_or_default();
    let label_shaped = start.contains(':')
        && head.split_whitespace().count() <= 3
        && head.chars().all(|c| c.is_alphanumeric() || c == ' ');
    assert!(!label_shaped, "the answer begins with a label: {answer:?}");
    assert!(answer.contains("Tokyo"), "{answer:?}");
}
