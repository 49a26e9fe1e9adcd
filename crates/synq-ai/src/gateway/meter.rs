//! Metering an answer against the daily token budgets as it streams.

use std::sync::Arc;
use std::time::Instant;

use futures_util::{Stream, StreamExt, stream};

use super::GatewayState;
use super::admission::Caller;
use super::api_error::ApiError;
use super::guards::{approx_prompt_tokens, approx_tokens};
use crate::AiError;
use crate::backend::{AiEvent, ChatRequest, EventStream, Usage, UsageReport};

/// What the metered answer stream yields.
pub(super) enum Piece {
    Delta(String),
    /// Still waiting for the model: this many requests are ahead.
    Queued(u32),
    /// The end, with OpenAI's `finish_reason`.
    End(&'static str),
    Error(AiError),
}

/// What one request has cost so far, counted against both daily budgets.
pub(super) struct Charge {
    state: Arc<GatewayState>,
    addr: String,
    /// The prompt's estimate plus the answer's tokens so far.
    pub(super) tokens: u64,
}

impl Charge {
    /// Counts the prompt before anything is sent upstream, or refuses the request (429)
    /// if it would take either budget past its limit: a huge prompt costs the operator
    /// even if the answer is cut at once.
    pub(super) fn reserve(
        state: &Arc<GatewayState>,
        who: &Caller,
        request: &ChatRequest,
    ) -> Result<Charge, ApiError> {
        let prompt = approx_prompt_tokens(request.messages.iter().map(|m| m.content.as_str()));
        let too_big = |left: u64, whose: &str, per_day: u64| {
            ApiError::budget_exhausted(format!(
                "this request needs about {prompt} tokens but only {left} are left today of {whose} daily AI budget ({per_day} tokens); send a shorter conversation, or wait until midnight UTC"
            ))
        };
        state
            .per_address_budget
            .try_spend(&who.addr, prompt)
            .map_err(|left| too_big(left, "your address's", state.per_address_budget.per_day()))?;
        if let Err(left) = state.budget.try_spend(prompt) {
            state.per_address_budget.refund(&who.addr, prompt);
            return Err(too_big(left, "this server's", state.budget.per_day()));
        }
        Ok(Charge {
            state: state.clone(),
            addr: who.addr.clone(),
            tokens: prompt,
        })
    }

    /// Counts answer tokens; `false` once either budget is used up.
    fn spend(&mut self, tokens: u64) -> bool {
        self.tokens += tokens;
        let server = self.state.budget.spend(tokens);
        let address = self.state.per_address_budget.spend(&self.addr, tokens);
        server > 0 && address > 0
    }

    /// Replaces the estimate with the service's own count.
    fn settle(&mut self, usage: Usage) {
        let actual = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        if actual > self.tokens {
            let more = actual - self.tokens;
            self.state.budget.spend(more);
            self.state.per_address_budget.spend(&self.addr, more);
        } else {
            let less = self.tokens - actual;
            self.state.budget.refund(less);
            self.state.per_address_budget.refund(&self.addr, less);
        }
        self.tokens = actual;
    }
}

/// Wraps a backend stream: counts tokens against the daily budgets and ends the answer
/// (dropping the backend stream, so cancelling it) when one runs out; at the end, uses
/// the service's own count if it reported one.
pub(super) fn metered(
    inner: EventStream,
    usage: UsageReport,
    charge: Charge,
) -> impl Stream<Item = Piece> + Send {
    struct Meter {
        inner: Option<EventStream>,
        usage: UsageReport,
        charge: Charge,
        ended: bool,
        answer_tokens: u64,
        started: Instant,
    }
    impl Meter {
        fn end(mut self, piece: Piece) -> Option<(Piece, Meter)> {
            self.inner = None;
            self.ended = true;
            let reported = self.usage.get();
            if let Some(u) = reported {
                self.charge.settle(u);
            }
            let outcome = match &piece {
                Piece::End(finish) => *finish,
                _ => "error",
            };
            tracing::info!(
                tokens = self.charge.tokens,
                answer_tokens = self.answer_tokens,
                reported = reported.is_some(),
                ms = self.started.elapsed().as_millis() as u64,
                outcome,
                "AI answer ended"
            );
            Some((piece, self))
        }
    }
    impl Drop for Meter {
        fn drop(&mut self) {
            if !self.ended {
                tracing::info!(
                    tokens = self.charge.tokens,
                    ms = self.started.elapsed().as_millis() as u64,
                    "AI answer cancelled: the caller went away"
                );
            }
        }
    }
    let meter = Meter {
        inner: Some(inner),
        usage,
        charge,
        ended: false,
        answer_tokens: 0,
        started: Instant::now(),
    };
    stream::unfold(meter, |mut m| async move {
        if m.ended {
            return None;
        }
        let Some(s) = m.inner.as_mut() else {
            return m.end(Piece::End("length"));
        };
        loop {
            match s.next().await {
                Some(Ok(AiEvent::Queued { ahead })) => return Some((Piece::Queued(ahead), m)),
                Some(Ok(AiEvent::Text(d))) if d.is_empty() => continue,
                Some(Ok(AiEvent::Text(d))) => {
                    let tokens = approx_tokens(&d);
                    m.answer_tokens += tokens;
                    if !m.charge.spend(tokens) {
                        tracing::warn!("daily AI token budget used up; ending the answer");
                        m.inner = None; // cancels the backend now
                    }
                    return Some((Piece::Delta(d), m));
                }
                None => return m.end(Piece::End("stop")),
                Some(Err(e)) => return m.end(Piece::Error(e)),
            }
        }
    })
}
