//! The KV caches of recent prompts, so that a prompt that starts like an earlier one is
//! read only from where it differs.
//!
//! A chat room's request repeats its previous prompt (system line, transcript) plus a few
//! new entries, so most of it was already read. Several rooms share one model: each
//! finished generation leaves its cache here (prompt and answer); the next request takes
//! the entry with the longest common token prefix, cut back to that prefix. Entries are
//! bounded by a memory budget, the least recently used evicted first.

use super::transformer::{KvCache, Model};

/// A cache whose tokens waste more than this much unused capacity is shrunk when stored.
const SLACK_TOKENS: usize = 64;

struct Entry {
    tokens: Vec<u32>,
    kv: KvCache,
    last_used: u64,
}

/// The stored caches.
pub struct PromptCache {
    entries: Vec<Entry>,
    budget_bytes: usize,
    clock: u64,
}

/// A cache to continue, and how many of the prompt's tokens it already holds.
pub struct Reuse {
    pub kv: KvCache,
    pub reused: usize,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PromptCache {
    /// Keeps at most `budget_bytes` of KV caches (0: none).
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            entries: Vec::new(),
            budget_bytes,
            clock: 0,
        }
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.kv.bytes()).sum()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// A cache for `prompt` with room for `capacity` tokens, holding the longest prefix of
    /// `prompt` that a stored entry has (never the whole prompt: its last token must be
    /// read to get the logits of the next one).
    pub fn take(
        &mut self,
        model: &Model,
        prompt: &[u32],
        capacity: usize,
    ) -> candle_core::Result<Reuse> {
        let limit = prompt.len().saturating_sub(1);
        let best = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit)))
            .max_by_key(|&(_, n)| n);
        let Some((index, reused)) = best.filter(|&(_, n)| n > 0) else {
            return Ok(Reuse {
                kv: model.new_cache(capacity)?,
                reused: 0,
            });
        };
        // The same conversation, continued: the entry is superseded by what this request
        // will store, so move it. A shorter match (another room with the same system
        // prompt) copies the prefix and leaves the entry to its own room.
        let kv = if reused * 2 >= self.entries[index].tokens.len() {
            let mut kv = self.entries.swap_remove(index).kv;
            kv.truncate(reused);
            kv.reserve(capacity)?;
            kv
        } else {
            self.clock += 1;
            self.entries[index].last_used = self.clock;
            self.entries[index].kv.copy_prefix(reused, capacity)?
        };
        Ok(Reuse { kv, reused })
    }

    /// Stores the cache of `tokens` (what was read: the prompt and the answer but its last
    /// token), dropping entries it makes useless and then the least recently used ones
    /// beyond the budget.
    pub fn put(&mut self, tokens: Vec<u32>, mut kv: KvCache) -> candle_core::Result<()> {
        kv.truncate(tokens.len());
        let tokens = tokens[..kv.len()].to_vec();
        if tokens.is_empty() || self.budget_bytes == 0 {
            return Ok(());
        }
        if kv.capacity() > kv.len() + SLACK_TOKENS {
            kv = kv.copy_prefix(kv.len(), kv.len())?;
        }
        // An entry whose tokens all start the new one gives nothing the new one does not.
        self.entries
            .retain(|e| common_prefix(&e.tokens, &tokens) < e.tokens.len());
        self.clock += 1;
        self.entries.push(Entry {
            tokens,
            kv,
            last_used: self.clock,
        });
        while self.bytes() > self.budget_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            let evicted = self.entries.swap_remove(oldest);
            tracing::debug!(tokens = evicted.tokens.len(), "evicted a cached prompt");
        }
        Ok(())
    }
}
