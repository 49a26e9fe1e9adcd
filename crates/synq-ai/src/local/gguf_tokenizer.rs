//! A `tokenizers` BPE tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata, so that
//! the `.gguf` alone is enough (as in llama.cpp and Ollama), and a streaming decoder that only
//! emits complete UTF-8 text.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::AiError;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Llama 3's pre-tokenizer split (`tokenizer.ggml.pre` = "llama-bpe"), as in its tokenizer.json.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: the same but single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer of a GGUF model plus what generation needs from its metadata.
#[derive(Clone)]
pub struct GgufTokenizer {
    /// Parses special tokens (`<|im_start|>`) in its input: for the chat template's markers.
    tokenizer: Tokenizer,
    /// Encodes special-token text as plain text: for message contents, so that a user
    /// cannot inject `<|im_start|>system` into the prompt.
    literal: Tokenizer,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("eos_token_id", &self.eos_token_id)
            .finish()
    }
}

fn tokenizer_error(reason: impl std::fmt::Display) -> AiError {
    AiError::ModelUnavailable {
        reason: format!("cannot build the tokenizer from the GGUF metadata: {reason}"),
        fix: "pass a tokenizer.json for this model, or use a GGUF with a gpt2 (BPE) vocabulary such as SmolLM2, Qwen2.5 or Llama 3".into(),
    }
}

fn get_u32(metadata: &HashMap<String, Value>, key: &str) -> Option<u32> {
    metadata.get(key).and_then(|v| v.to_u32().ok())
}

fn get_strings<'a>(
    metadata: &'a HashMap<String, Value>,
    key: &str,
) -> Result<Vec<&'a str>, AiError> {
    let values = metadata
        .get(key)
        .ok_or_else(|| tokenizer_error(format!("{key} is missing")))?
        .to_vec()
        .map_err(|e| tokenizer_error(format!("{key}: {e}")))?;
    values
        .iter()
        .map(|v| {
            v.to_string()
                .map(String::as_str)
                .map_err(|e| tokenizer_error(format!("{key}: {e}")))
        })
        .collect()
}

impl GgufTokenizer {
    /// Builds the tokenizer from a parsed GGUF header.
    pub fn from_gguf(content: &Content) -> Result<Self, AiError> {
        let md = &content.metadata;
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or("");
        if model != "gpt2" {
            return Err(tokenizer_error(format!(
                "tokenizer.ggml.model is {model:?}; only \"gpt2\" (byte-level BPE) is supported"
            )));
        }
        let tokens = get_strings(md, "tokenizer.ggml.tokens")?;
        let merges = get_strings(md, "tokenizer.ggml.merges")?;
        let token_types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| tokenizer_error(format!("tokenizer.ggml.token_type: {e}")))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => Vec::new(),
        };

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.to_string(), id as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tokenizer_error(format!("malformed merge {m:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tokenizer_error)?;

        let mut tokenizer = Tokenizer::new(bpe);
        let pre = md
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or("gpt2");
        let split = |regex: &str| {
            Split::new(
                SplitPattern::Regex(regex.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tokenizer_error)
        };
        // The ByteLevel step maps bytes to the GPT-2 alphabet; with `use_regex` it also does
        // GPT-2's own split, which the models below replace by theirs.
        match pre {
            "llama-bpe" | "llama3" | "smaug-bpe" => {
                tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                    split(LLAMA3_SPLIT)?.into(),
                    ByteLevel::new(false, true, false).into(),
                ])));
            }
            "qwen2" | "deepseek-r1-qwen" => {
                tokenizer.with_normalizer(Some(NFC));
                tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                    split(QWEN2_SPLIT)?.into(),
                    ByteLevel::new(false, true, false).into(),
                ])));
            }
            "smollm" | "starcoder" | "refact" => {
                tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                    Digits::new(true).into(),
                    ByteLevel::new(false, true, true).into(),
                ])));
            }
            other => {
                if other != "gpt2" && other != "default" {
                    tracing::warn!(
                        pre = other,
                        "unknown tokenizer.ggml.pre, using GPT-2's pre-tokenizer"
                    );
                }
                tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
            }
        }
        tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));

        // Control tokens (`<|im_start|>`, `<|eot_id|>`) must encode as one id and are skipped
        // when decoding; user-defined ones are matched whole but kept in the text.
        let mut special = Vec::new();
        let mut user_defined = Vec::new();
        for (id, t) in token_types.iter().enumerate() {
            let Some(text) = tokens.get(id) else { break };
            match *t {
                TOKEN_TYPE_CONTROL => special.push(AddedToken::from(text.to_string(), true)),
                TOKEN_TYPE_USER_DEFINED => {
                    user_defined.push(AddedToken::from(text.to_string(), false))
                }
                _ => {}
            }
        }
        tokenizer.add_special_tokens(&special);
        tokenizer.add_tokens(&user_defined);

        let mut literal = tokenizer.clone();
        literal.set_encode_special_tokens(true);
        Ok(Self {
            tokenizer,
            literal,
            eos_token_id: get_u32(md, "tokenizer.ggml.eos_token_id"),
            bos_token_id: get_u32(md, "tokenizer.ggml.bos_token_id"),
        })
    }

    /// Reads a tokenizer.json (for GGUFs without a usable vocabulary).
    pub fn from_file(path: &Path, content: &Content) -> Result<Self, AiError> {
        let tokenizer = Tokenizer::from_file(path).map_err(|e| AiError::ModelUnavailable {
            reason: format!("cannot read the tokenizer {}: {e}", path.display()),
            fix: "give the path of the model's tokenizer.json, or none to use the GGUF's own vocabulary".into(),
        })?;
        let mut literal = tokenizer.clone();
        literal.set_encode_special_tokens(true);
        Ok(Self {
            tokenizer,
            literal,
            eos_token_id: get_u32(&content.metadata, "tokenizer.ggml.eos_token_id"),
            bos_token_id: get_u32(&content.metadata, "tokenizer.ggml.bos_token_id"),
        })
    }

    /// Reads the GGUF header of `path` and builds its tokenizer (tests, tools).
    pub fn from_gguf_file(path: &Path) -> Result<Self, AiError> {
        let content = super::model::read_header(path)?;
        Self::from_gguf(&content)
    }

    /// The underlying `tokenizers` tokenizer (special tokens are parsed in its input).
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Encodes text in which special tokens (`<|im_start|>`) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, AiError> {
        encode_with(&self.tokenizer, text)
    }

    /// Encodes text in which special-token text is ordinary text.
    pub fn encode_literal(&self, text: &str) -> Result<Vec<u32>, AiError> {
        encode_with(&self.literal, text)
    }

    /// Decodes ids to text, leaving out special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, AiError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| AiError::Generation(format!("decoding tokens: {e}")))
    }

    /// The id of a token of the vocabulary (including special tokens).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }
}

fn encode_with(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, AiError> {
    tokenizer
        .encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| AiError::InvalidRequest(format!("cannot tokenize the prompt: {e}")))
}

/// Turns generated ids into text deltas. A character may be split across tokens (UTF-8 bytes
/// of byte-level BPE): text is emitted only once it decodes without a trailing U+FFFD.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Start of the ids whose text is decoded for the diff (some context before `emitted`).
    prefix: usize,
    /// Ids before this have had their text emitted.
    emitted: usize,
}

impl StreamDecoder {
    /// Adds one id; returns new complete text, if any.
    pub fn push(&mut self, tokenizer: &GgufTokenizer, id: u32) -> Result<Option<String>, AiError> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.emitted])?;
        self.ids.push(id);
        let now = tokenizer.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && let Some(new) = now.get(before.len()..)
        {
            let new = new.to_string();
            self.prefix = self.emitted;
            self.emitted = self.ids.len();
            return Ok(Some(new));
        }
        Ok(None)
    }

    /// The text still held back (an incomplete character at the end is emitted as U+FFFD).
    pub fn finish(&mut self, tokenizer: &GgufTokenizer) -> Result<Option<String>, AiError> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.emitted])?;
        let now = tokenizer.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.emitted = self.ids.len();
        Ok(now
            .get(before.len()..)
            .filter(|s| !s.is_empty())
            .map(str::to_string))
    }
}
