//! The embedded model: a quantized GGUF chat model (llama or qwen2 architecture) run on the
//! CPU with candle.
//!
//! The `.gguf` alone is enough: the tokenizer is built from its metadata
//! ([`gguf_tokenizer`]), the chat template is recognised from it ([`chat_template`]).
//! Generation runs on a blocking thread, one request at a time (the CPU is the bottleneck):
//! the other requests wait in a first-come-first-served line ([`line`]) and their streams
//! say how many requests are ahead ([`AiEvent::Queued`]). Text deltas go through a bounded
//! channel: dropping the stream leaves the line at once, or stops the generation at the
//! next token. The forward pass is our own
//! ([`transformer`]) so that the KV caches of recent prompts can be kept and continued
//! ([`prompt_cache`]): a chat room's next prompt is read only from where it differs from
//! its previous one.

/// `$tile::<M>(args…)` for a tile of `$rows` (1 to 4) input rows: the matrix kernels take
/// their tile's row count as a constant, so that its accumulators stay in registers.
macro_rules! tile_rows {
    ($rows:expr, $tile:ident($($arg:expr),* $(,)?)) => {
        match $rows {
            4 => $tile::<4>($($arg),*),
            3 => $tile::<3>($($arg),*),
            2 => $tile::<2>($($arg),*),
            _ => $tile::<1>($($arg),*),
        }
    };
}

mod answer_start;
pub mod chat_template;
mod download;
pub mod gguf_tokenizer;
mod line;
mod model;
mod prompt_cache;
// SIMD intrinsics (AVX-512 VNNI) need unsafe; each block states why it is sound, and the
// kernel runs only where the CPU reports the features.
#[expect(
    unsafe_code,
    reason = "the Q4_K kernel's intrinsics and its disjoint-writes pointer"
)]
mod q4k;
#[expect(
    unsafe_code,
    reason = "the Q8_0 kernel's intrinsics and its disjoint-writes pointer"
)]
mod q8;
mod sampler;
pub mod transformer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::backend::{AiEvent, EventStream, QUEUE_HEARTBEAT, UsageReport};
use crate::{AiError, ChatBackend, ChatMessage, ChatRequest, Role};
use answer_start::{StartGuard, Verdict};
pub use chat_template::ChatTemplate;
pub use download::{
    DEFAULT_MODEL, DownloadProgress, EMBEDDED_MODELS, HubModel, QWEN2_5_0_5B, QWEN2_5_1_5B,
    default_for, embedded_model, fetch_model,
};
pub use gguf_tokenizer::GgufTokenizer;
use line::Line;
pub use model::SUPPORTED_ARCHITECTURES;
use prompt_cache::PromptCache;
use sampler::Sampler;
use transformer::{Convert, KvCache, Model};

/// Whether this CPU runs synq's own matrix kernels (AVX-512 VNNI): the embedded models
/// then read prompts faster, and the 1.5B model takes 0.8 GB less memory.
pub fn fast_kernels() -> bool {
    q8::supported()
}

/// Prompt tokens fed to the model per forward pass: bounds the attention scratch memory of
/// long prompts, and lets a cancelled request stop between chunks.
const PREFILL_CHUNK: usize = 256;
/// Answer tokens a new KV cache has room for before it must grow (chat answers are short;
/// `max_tokens` is often much larger).
const ANSWER_RESERVE: usize = 256;
/// Deltas buffered between the generation thread and the stream's reader.
const CHANNEL_CAPACITY: usize = 16;

/// How to load and run the embedded model.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalOptions {
    /// A `tokenizer.json` to use instead of the tokenizer built from the GGUF metadata.
    pub tokenizer_path: Option<PathBuf>,
    /// CPU threads for the matrix products. `None`: candle's default (the physical cores,
    /// or `CANDLE_NUM_THREADS`). Process-wide, fixed by the first model loaded.
    pub threads: Option<usize>,
    /// Temperature when a request has none (0 = greedy).
    pub default_temperature: f32,
    /// Nucleus sampling threshold when a request has none.
    pub default_top_p: f32,
    /// Prompt plus answer, in tokens (capped by the model's own context length). Older
    /// messages are left out of prompts that would not fit.
    pub context_tokens: usize,
    /// Memory for the KV caches of recent prompts (bytes; 0 = none), so that a prompt that
    /// starts like an earlier one (a chat room's next request) is read only from where it
    /// differs. Least recently used first out.
    pub prompt_cache_bytes: usize,
}

/// Default [`LocalOptions::prompt_cache_bytes`]: 128 MiB, the caches of 4–5 rooms of
/// ~1,000 tokens with Qwen2.5-0.5B (24 KiB per token), 2 with the 1.5B (56 KiB).
pub const DEFAULT_PROMPT_CACHE_BYTES: usize = 128 << 20;

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            tokenizer_path: None,
            threads: None,
            default_temperature: 0.7,
            default_top_p: 0.9,
            // Enough for a chat with some history; a longer prompt costs seconds to read
            // on 2 cores.
            context_tokens: 4096,
            prompt_cache_bytes: DEFAULT_PROMPT_CACHE_BYTES,
        }
    }
}

/// Figures about the last generation (for benchmarks and logs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationStats {
    /// Tokens of the prompt after the chat template and any truncation.
    pub prompt_tokens: usize,
    /// Of those, the tokens found in the prompt cache (not read again).
    pub cached_tokens: usize,
    /// Tokens generated, not counting the end-of-turn token.
    pub tokens: usize,
    /// Times the answer was drawn again because it began with a person's label
    /// (`answer_start`).
    pub redraws: usize,
    /// From the start of the generation (the lock obtained) to the first token sampled.
    pub time_to_first_token: Duration,
    /// From the start of the generation to its end.
    pub total: Duration,
}

impl GenerationStats {
    /// Decoding speed: tokens after the first, per second after the first.
    pub fn tokens_per_second(&self) -> f64 {
        let decode = self.total.saturating_sub(self.time_to_first_token);
        if self.tokens < 2 || decode.is_zero() {
            return 0.0;
        }
        (self.tokens - 1) as f64 / decode.as_secs_f64()
    }
}

/// The embedded model as a [`ChatBackend`].
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    model: Model,
    /// One generation at a time, the others wait in line.
    line: Arc<Line>,
    /// Taken by the generation that holds the line's turn (uncontended).
    cache: Mutex<PromptCache>,
    tokenizer: GgufTokenizer,
    template: ChatTemplate,
    stop_tokens: Vec<u32>,
    context_tokens: usize,
    default_temperature: f32,
    default_top_p: f32,
    generated: AtomicU64,
    last_stats: Mutex<Option<GenerationStats>>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("model", &self.inner.name)
            .field("template", &self.inner.template)
            .field("context_tokens", &self.inner.context_tokens)
            .finish()
    }
}

/// candle sizes its thread pool once per process, from `CANDLE_NUM_THREADS`.
#[expect(
    unsafe_code,
    reason = "std::env::set_var is unsafe in edition 2024; see SAFETY below"
)]
fn configure_threads(threads: Option<usize>) {
    static APPLIED: OnceLock<Option<usize>> = OnceLock::new();
    let applied = *APPLIED.get_or_init(|| {
        if let Some(n) = threads.filter(|n| *n > 0) {
            // SAFETY: set before candle first reads it (its pool is created lazily by the
            // first model operation, after this). Rust's own env accesses are synchronised;
            // the model is loaded before any native code in this process reads the
            // environment concurrently.
            unsafe {
                std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
                std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            }
        }
        threads
    });
    if threads.is_some() && threads != applied {
        tracing::warn!(
            requested = ?threads,
            in_use = ?applied,
            "the model's thread count is fixed by the first model loaded in this process"
        );
    }
}

impl LocalBackend {
    /// Loads a GGUF model. Blocking (reads hundreds of MB): call it from `spawn_blocking`.
    pub fn load(model_path: &Path, options: LocalOptions) -> Result<LocalBackend, AiError> {
        let started = Instant::now();
        configure_threads(options.threads);
        let content = model::read_header(model_path)?;
        let arch = model::architecture(&content);
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(AiError::ModelUnavailable {
                reason: format!(
                    "{} is a model of architecture {arch:?}, which the embedded backend does not run (supported: {})",
                    model_path.display(),
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
                fix: model::UNSUPPORTED_FIX.into(),
            });
        }
        let tokenizer = match &options.tokenizer_path {
            Some(path) => GgufTokenizer::from_file(path, &content)?,
            None => GgufTokenizer::from_gguf(&content)?,
        };
        let jinja = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str);
        let template = ChatTemplate::detect(jinja, &tokenizer);
        let stop_tokens = template.stop_tokens(&tokenizer);
        let (model, model_context) = model::load(model_path, &content, Convert::SlowTypesToQ8)?;
        // The loader's temporary copies of the weights (read, converted, rearranged) are
        // freed, but glibc keeps freed heap memory for reuse: give it back to the system.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim has no preconditions.
        #[expect(unsafe_code, reason = "an FFI call to glibc's malloc_trim")]
        unsafe {
            libc::malloc_trim(0);
        }
        let context_tokens = options.context_tokens.clamp(64, model_context.max(64));
        let name = model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "local".into());
        tracing::info!(
            model = %name,
            arch,
            ?template,
            context_tokens,
            load_s = started.elapsed().as_secs_f64(),
            "loaded the local model"
        );
        Ok(LocalBackend {
            inner: Arc::new(Inner {
                name,
                model,
                line: Line::new(),
                cache: Mutex::new(PromptCache::new(options.prompt_cache_bytes)),
                tokenizer,
                template,
                stop_tokens,
                context_tokens,
                default_temperature: options.default_temperature,
                default_top_p: options.default_top_p,
                generated: AtomicU64::new(0),
                last_stats: Mutex::new(None),
            }),
        })
    }

    /// The tokenizer in use.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.inner.tokenizer
    }

    /// The chat template in use.
    pub fn template(&self) -> &ChatTemplate {
        &self.inner.template
    }

    /// Prompt plus answer, in tokens.
    pub fn context_tokens(&self) -> usize {
        self.inner.context_tokens
    }

    /// Tokens generated by this backend since it was loaded (all requests).
    pub fn generated_tokens(&self) -> u64 {
        self.inner.generated.load(Ordering::SeqCst)
    }

    /// Forgets the cached prompts (the next request reads its whole prompt).
    pub fn clear_prompt_cache(&self) {
        let mut cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.clear();
    }

    /// Figures about the last finished generation.
    pub fn last_stats(&self) -> Option<GenerationStats> {
        *self
            .inner
            .last_stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The prompt's tokens and the number of tokens that may be generated: leaves out the
    /// oldest messages (never the system prompt or the last message) until the prompt and
    /// a reasonable answer fit in the context.
    pub fn prompt_tokens(
        &self,
        messages: &[ChatMessage],
        max_tokens: u32,
    ) -> Result<(Vec<u32>, usize), AiError> {
        let inner = &self.inner;
        let ctx = inner.context_tokens;
        let wanted = max_tokens as usize;
        // Room kept for the answer when the history must be shortened.
        let reserve = wanted.min(ctx / 2).max(1);
        let mut messages = messages.to_vec();
        loop {
            let ids = inner.encode(&messages)?;
            let len = ids.len();
            if len + reserve <= ctx {
                return Ok((ids, wanted.min(ctx - len)));
            }
            let droppable = messages
                .iter()
                .enumerate()
                .position(|(i, m)| m.role != Role::System && i + 1 < messages.len());
            match droppable {
                Some(i) => {
                    tracing::debug!(prompt_tokens = len, ctx, "leaving out an old message");
                    messages.remove(i);
                }
                None if len < ctx => return Ok((ids, ctx - len)),
                None => {
                    return Err(AiError::InvalidRequest(format!(
                        "the conversation is {len} tokens long, more than the local model's context of {ctx} tokens; shorten the messages"
                    )));
                }
            }
        }
    }
}

impl Inner {
    fn encode(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, AiError> {
        let mut ids = Vec::new();
        for piece in self.template.render(messages) {
            match piece {
                chat_template::Piece::Markup(s) => ids.extend(self.tokenizer.encode(&s)?),
                chat_template::Piece::Content(s) => ids.extend(self.tokenizer.encode_literal(&s)?),
            }
        }
        Ok(ids)
    }

    /// Runs one generation on the calling (blocking) thread, sending deltas to `tx`.
    fn generate(&self, job: Job, tx: Sender) {
        // Uncontended (the caller holds the line's turn); a poisoned lock only means an
        // earlier generation panicked (its KV cache was not stored back).
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if tx.is_closed() {
            tracing::debug!("request cancelled while waiting for the model");
            return;
        }
        let started = Instant::now();
        let mut stats = GenerationStats {
            prompt_tokens: job.prompt.len(),
            cached_tokens: 0,
            tokens: 0,
            redraws: 0,
            time_to_first_token: Duration::ZERO,
            total: Duration::ZERO,
        };
        // A panic in the model code must not end the stream as if the answer were complete.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run(&mut cache, &job, &tx, &mut stats, started)
        }))
        .unwrap_or_else(|_| Err(AiError::Generation("the model code panicked".into())));
        stats.total = started.elapsed();
        *self
            .last_stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(stats);
        drop(cache);
        tracing::info!(
            prompt_tokens = stats.prompt_tokens,
            cached_tokens = stats.cached_tokens,
            tokens = stats.tokens,
            redraws = stats.redraws,
            ttft_ms = stats.time_to_first_token.as_millis() as u64,
            tokens_per_s = stats.tokens_per_second(),
            cancelled = tx.is_closed(),
            "local generation done"
        );
        if let Err(e) = result {
            tracing::warn!(error = %e, "local generation failed");
            let _ = tx.blocking_send(Err(e));
        }
    }

    fn run(
        &self,
        cache: &mut PromptCache,
        job: &Job,
        tx: &Sender,
        stats: &mut GenerationStats,
        started: Instant,
    ) -> Result<(), AiError> {
        let capacity = job.prompt.len() + job.max_new_tokens.min(ANSWER_RESERVE);
        let reuse = cache
            .take(&self.model, &job.prompt, capacity)
            .map_err(model_error)?;
        stats.cached_tokens = reuse.reused;
        let mut kv = reuse.kv;
        // What the cache holds, to store it back with the cache (even when cancelled).
        let mut read: Vec<u32> = job.prompt[..reuse.reused].to_vec();
        let result = self.read_and_generate(&mut kv, &mut read, job, tx, stats, started);
        if result.is_ok() {
            cache.put(read, kv).map_err(model_error)?;
            tracing::debug!(entries = cache.len(), bytes = cache.bytes(), "prompt cache");
        }
        result
    }

    /// Reads the rest of the prompt into `kv`, then generates; `read` follows what `kv`
    /// holds.
    fn read_and_generate(
        &self,
        kv: &mut KvCache,
        read: &mut Vec<u32>,
        job: &Job,
        tx: &Sender,
        stats: &mut GenerationStats,
        started: Instant,
    ) -> Result<(), AiError> {
        let forward = |kv: &mut KvCache, tokens: &[u32]| -> Result<Vec<f32>, AiError> {
            self.model
                .forward(tokens, kv)
                .and_then(|logits| logits.to_vec1::<f32>())
                .map_err(model_error)
        };
        let mut logits = None;
        for chunk in job.prompt[read.len()..].chunks(PREFILL_CHUNK) {
            if tx.is_closed() {
                return Ok(());
            }
            logits = Some(forward(kv, chunk)?);
            read.extend_from_slice(chunk);
        }
        let Some(mut logits) = logits else {
            return Err(AiError::InvalidRequest("empty prompt".into()));
        };
        let mut sampler = Sampler::new(job.seed, job.temperature, job.top_p);
        let mut generated = Vec::new();
        let mut decoder = gguf_tokenizer::StreamDecoder::default();
        let mut start = StartGuard::new(job.group_chat);
        // For drawing the answer again from its first token (see `answer_start`).
        let first_logits = (!start.released()).then(|| logits.clone());
        let mut redrawn: Vec<u32> = Vec::new();
        loop {
            let next = sampler.sample(&logits, &generated);
            if generated.is_empty() && redrawn.is_empty() {
                stats.time_to_first_token = started.elapsed();
            }
            if self.stop_tokens.contains(&next) {
                break;
            }
            generated.push(next);
            stats.tokens = generated.len();
            self.generated.fetch_add(1, Ordering::SeqCst);
            let mut text = decoder.push(&self.tokenizer, next)?;
            if !start.released()
                && let Some(piece) = text.take()
            {
                match start.push(&piece) {
                    Verdict::Hold => {}
                    Verdict::Release(held) => text = Some(held),
                    Verdict::Redraw => {
                        if let (Some(first), Some(&token)) = (&first_logits, generated.first())
                            && redrawn.len() < answer_start::MAX_REDRAWS
                        {
                            tracing::debug!(
                                start = piece,
                                "the answer began as a person: drawn again"
                            );
                            redrawn.push(token);
                            stats.redraws = redrawn.len();
                            kv.truncate(job.prompt.len());
                            read.truncate(job.prompt.len());
                            logits = first.clone();
                            for &t in &redrawn {
                                if let Some(l) = logits.get_mut(t as usize) {
                                    *l = f32::NEG_INFINITY;
                                }
                            }
                            generated.clear();
                            decoder = gguf_tokenizer::StreamDecoder::default();
                            start.restart();
                            continue;
                        }
                        text = start.finish();
                    }
                }
            }
            let sent = match text {
                Some(text) => tx.blocking_send(Ok(AiEvent::Text(text))).is_ok(),
                None => !tx.is_closed(),
            };
            if !sent {
                return Ok(()); // the stream was dropped
            }
            if generated.len() >= job.max_new_tokens {
                break;
            }
            logits = forward(kv, &[next])?;
            read.push(next);
        }
        let rest = [start.finish(), decoder.finish(&self.tokenizer)?];
        for text in rest.into_iter().flatten() {
            let _ = tx.blocking_send(Ok(AiEvent::Text(text)));
        }
        Ok(())
    }
}

/// Where the generation thread sends the answer.
type Sender = mpsc::Sender<Result<AiEvent, AiError>>;

/// One request, ready for the generation thread.
struct Job {
    prompt: Vec<u32>,
    max_new_tokens: usize,
    temperature: f32,
    top_p: f32,
    seed: u64,
    /// A group chat's answer may not begin with a person's label (`answer_start`).
    group_chat: bool,
}

#[async_trait::async_trait]
impl ChatBackend for LocalBackend {
    fn model(&self) -> String {
        self.inner.name.clone()
    }

    async fn stream_events(
        &self,
        request: ChatRequest,
    ) -> Result<(EventStream, UsageReport), AiError> {
        request.validate()?;
        let (prompt, max_new_tokens) = self.prompt_tokens(&request.messages, request.max_tokens)?;
        let job = Job {
            prompt,
            max_new_tokens,
            temperature: request
                .temperature
                .unwrap_or(self.inner.default_temperature),
            top_p: request.top_p.unwrap_or(self.inner.default_top_p),
            seed: request.seed.unwrap_or_else(rand::random),
            group_chat: answer_start::is_group_chat(&request.messages),
        };
        // The place in line is taken now, in the order requests arrive.
        let ticket = self.inner.line.join();
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(wait_and_generate(Arc::clone(&self.inner), ticket, job, tx));
        let events = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok((Box::pin(events), UsageReport::default()))
    }
}

/// Waits in line, telling the caller its place whenever it changes (and every
/// [`QUEUE_HEARTBEAT`]), then generates on a blocking thread. Leaves the line as soon as
/// the caller drops the stream.
async fn wait_and_generate(inner: Arc<Inner>, mut ticket: line::Ticket, job: Job, tx: Sender) {
    let mut told = None;
    let mut told_at = tokio::time::Instant::now();
    let turn = loop {
        match ticket.try_start() {
            Ok(turn) => break turn,
            Err(ahead) => {
                // Others joining behind change the line but not this place: the heartbeat
                // is kept by time, not by changes.
                if told != Some(ahead) || told_at.elapsed() >= QUEUE_HEARTBEAT {
                    told = Some(ahead);
                    told_at = tokio::time::Instant::now();
                    tracing::debug!(ahead, "request waits for the local model");
                    if tx.send(Ok(AiEvent::Queued { ahead })).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    () = ticket.changed() => {}
                    () = tx.closed() => {
                        tracing::debug!("request left the line: the caller went away");
                        return;
                    }
                    () = tokio::time::sleep_until(told_at + QUEUE_HEARTBEAT) => {}
                }
            }
        }
    };
    drop(ticket);
    if told.is_some() && tx.send(Ok(AiEvent::Queued { ahead: 0 })).await.is_err() {
        return;
    }
    tokio::task::spawn_blocking(move || {
        // The next request starts when this generation ends (or is cancelled).
        let _turn = turn;
        inner.generate(job, tx);
    });
}

/// A failure inside the model's computation, as the caller sees it.
fn model_error(e: candle_core::Error) -> AiError {
    AiError::Generation(model::first_line(e))
}
