//! The backend for any OpenAI-compatible chat-completions server.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{StreamExt, stream};
use reqwest::StatusCode;
use synq_openai::{ChatCompletionRequest, Event, SseDecoder, StreamOptions, error_message};
use tokio::time::Instant;

use crate::AiError;
use crate::backend::{AiEvent, ChatBackend, ChatRequest, EventStream, Role, Usage, UsageReport};

/// How to reach an OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// API base, e.g. `http://localhost:11434/v1` (Ollama) or `https://api.openai.com/v1`.
    /// `/chat/completions` is appended.
    pub base_url: String,
    /// The model to ask for; fixed by the server operator.
    pub model: String,
    /// Bearer token, if the server needs one.
    pub api_key: Option<String>,
    /// Time to open the TCP/TLS connection.
    pub connect_timeout: Duration,
    /// Time from sending the request to the first text delta (models may be loading).
    /// A synq gateway's queue position (`"synq": {"queue": N}`) restarts it: waiting in
    /// line, with a sign of life every few seconds, is not silence.
    pub first_token_timeout: Duration,
    /// Longest silence between two chunks once the answer streams.
    pub idle_timeout: Duration,
    /// Retries on 429, 5xx and connection failures, all before the first token.
    pub max_retries: u32,
    /// First retry delay; doubled each time, capped at `max_retry_delay`.
    pub retry_delay: Duration,
    pub max_retry_delay: Duration,
    /// Ask a streamed answer to end with the service's token count
    /// (`stream_options.include_usage`), which the gateway's budget then uses.
    pub include_usage: bool,
}

impl OpenAiConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            model: model.into(),
            api_key: None,
            connect_timeout: Duration::from_secs(10),
            first_token_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(60),
            max_retries: 3,
            retry_delay: Duration::from_millis(500),
            max_retry_delay: Duration::from_secs(10),
            include_usage: true,
        }
    }
}

/// Chat completions from an OpenAI-compatible server, streamed over server-sent events.
pub struct OpenAiBackend {
    config: OpenAiConfig,
    endpoint: String,
    client: reqwest::Client,
}

impl OpenAiBackend {
    pub fn new(config: OpenAiConfig) -> Result<Self, AiError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| AiError::Unreachable {
                url: config.base_url.clone(),
                reason: format!("cannot build an HTTP client: {e}"),
            })?;
        let endpoint = format!("{}/chat/completions", config.base_url);
        Ok(Self {
            config,
            endpoint,
            client,
        })
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// The request's own bearer token (a chat participant's AI capability), else the key.
    fn key<'a>(&'a self, request: &'a ChatRequest) -> Option<&'a str> {
        request
            .bearer
            .as_ref()
            .map(|b| b.0.as_str())
            .or(self.config.api_key.as_deref())
    }

    fn body(&self, request: &ChatRequest, stream: bool) -> ChatCompletionRequest {
        ChatCompletionRequest {
            model: self.config.model.clone(),
            messages: request
                .messages
                .iter()
                .map(|m| synq_openai::Message {
                    role: match m.role {
                        Role::System => "system",
                        Role::User => "user",
                        Role::Assistant => "assistant",
                    }
                    .to_owned(),
                    content: m.content.clone(),
                })
                .collect(),
            max_tokens: request.max_tokens,
            stream,
            stream_options: (stream && self.config.include_usage).then_some(StreamOptions {
                include_usage: true,
            }),
            temperature: request.temperature,
            top_p: request.top_p,
            seed: request.seed,
        }
    }

    /// Sends the request, retrying with exponential backoff on 429, 5xx and failed
    /// connections, until `deadline`. Returns a response with a success status.
    async fn send(
        &self,
        body: &ChatCompletionRequest,
        key: Option<&str>,
        deadline: Instant,
    ) -> Result<reqwest::Response, AiError> {
        let url = &self.config.base_url;
        let mut delay = self.config.retry_delay;
        let mut attempt = 0;
        loop {
            let mut req = self.client.post(&self.endpoint).json(body);
            if let Some(key) = key {
                req = req.bearer_auth(key);
            }
            let err = match tokio::time::timeout_at(deadline, req.send()).await {
                Err(_) => {
                    return Err(AiError::Timeout {
                        url: url.clone(),
                        after: self.config.first_token_timeout,
                    });
                }
                Ok(Err(e)) => AiError::Unreachable {
                    url: url.clone(),
                    reason: error_chain(&e),
                },
                Ok(Ok(resp)) if resp.status().is_success() => return Ok(resp),
                Ok(Ok(resp)) => self.status_error(resp).await,
            };
            let retryable = matches!(
                &err,
                AiError::Unreachable { .. } | AiError::RateLimited { .. }
            ) || matches!(&err, AiError::Upstream { status, .. } if *status >= 500);
            if !retryable {
                return Err(err);
            }
            if attempt >= self.config.max_retries {
                return Err(gave_up(err, attempt + 1));
            }
            attempt += 1;
            let wait = match &err {
                AiError::RateLimited {
                    retry_after: Some(after),
                    ..
                } => (*after).min(self.config.max_retry_delay),
                _ => delay,
            };
            if Instant::now() + wait >= deadline {
                return Err(err);
            }
            tracing::warn!(%err, attempt, wait_ms = wait.as_millis() as u64, "retrying AI request");
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(self.config.max_retry_delay);
        }
    }

    async fn status_error(&self, resp: reqwest::Response) -> AiError {
        let url = self.config.base_url.clone();
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        let message = error_message(&text);
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AiError::Unauthorized {
                url,
                status: status.as_u16(),
            },
            StatusCode::TOO_MANY_REQUESTS => AiError::RateLimited {
                what: format!("the AI service at {url}"),
                retry_after,
            },
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST
                if message.to_lowercase().contains("model") =>
            {
                AiError::UnknownModel {
                    url,
                    model: self.config.model.clone(),
                }
            }
            StatusCode::NOT_FOUND => AiError::Upstream {
                url: url.clone(),
                status: 404,
                message: format!(
                    "{} is not an OpenAI chat-completions endpoint; the service's URL should be the API base, such as http://localhost:11434/v1 ({message})",
                    self.endpoint
                ),
            },
            _ => AiError::Upstream {
                url,
                status: status.as_u16(),
                message,
            },
        }
    }
}

/// Says in the error that retrying did not help.
fn gave_up(err: AiError, attempts: u32) -> AiError {
    let note = format!(" (gave up after {attempts} attempts)");
    match err {
        AiError::Unreachable { url, reason } => AiError::Unreachable {
            url,
            reason: reason + &note,
        },
        AiError::Upstream {
            url,
            status,
            message,
        } => AiError::Upstream {
            url,
            status,
            message: message + &note,
        },
        AiError::RateLimited { what, retry_after } => AiError::RateLimited {
            what: what + &note,
            retry_after,
        },
        other => other,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// What one SSE event or JSON body says.
enum Parsed {
    Text(String),
    Queued(u32),
    Done,
    Nothing,
}

fn parse_event(url: &str, data: &str) -> Result<(Parsed, Option<Usage>), AiError> {
    let event = synq_openai::parse_event(data).map_err(|e| AiError::Protocol {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    match event {
        Event::Done => Ok((Parsed::Done, None)),
        Event::Error(message) => Err(AiError::Upstream {
            url: url.to_string(),
            status: 200,
            message,
        }),
        Event::Chunk { text, usage, queue } => {
            let usage = usage.map(|u| Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            });
            let parsed = match (text, queue) {
                (Some(t), _) => Parsed::Text(t),
                (None, Some(ahead)) => Parsed::Queued(ahead),
                (None, None) => Parsed::Nothing,
            };
            Ok((parsed, usage))
        }
    }
}

struct StreamState {
    url: String,
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    decoder: SseDecoder,
    ready: VecDeque<Result<AiEvent, AiError>>,
    first_deadline: Option<Instant>,
    first_timeout: Duration,
    idle_timeout: Duration,
    done: bool,
    /// `[DONE]` came (and the end of the body was not read yet).
    saw_done: bool,
    usage: UsageReport,
}

/// How long to wait for the end of the HTTP body after `[DONE]`.
const DRAIN_AFTER_DONE: Duration = Duration::from_millis(100);

impl StreamState {
    async fn next_item(&mut self) -> Option<Result<AiEvent, AiError>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                match &item {
                    Err(_) => self.done = true,
                    Ok(AiEvent::Text(_)) => self.first_deadline = None,
                    // Waiting in line: the first token is not due before its turn.
                    Ok(AiEvent::Queued { .. }) => {
                        if self.first_deadline.is_some() {
                            self.first_deadline = Some(Instant::now() + self.first_timeout);
                        }
                    }
                }
                return Some(item);
            }
            if self.done {
                if std::mem::take(&mut self.saw_done) {
                    // Read the end of the body (it follows `[DONE]` at once from a sane
                    // server) so that the connection goes back to the pool instead of
                    // being closed; a server that keeps it open is not waited for long.
                    let drain = async { while let Some(Ok(_)) = self.body.next().await {} };
                    let _ = tokio::time::timeout(DRAIN_AFTER_DONE, drain).await;
                }
                return None;
            }
            let (deadline, after) = match self.first_deadline {
                Some(d) => (d, self.first_timeout),
                None => (Instant::now() + self.idle_timeout, self.idle_timeout),
            };
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => {
                    self.done = true;
                    return Some(Err(AiError::Timeout {
                        url: self.url.clone(),
                        after,
                    }));
                }
                Ok(None) => {
                    if let Some(data) = self.decoder.finish() {
                        self.handle(&data);
                    }
                    self.done = true;
                }
                Ok(Some(Err(e))) => {
                    self.done = true;
                    return Some(Err(AiError::Unreachable {
                        url: self.url.clone(),
                        reason: format!("the answer broke off: {}", error_chain(&e)),
                    }));
                }
                Ok(Some(Ok(chunk))) => {
                    for data in self.decoder.push(&chunk) {
                        self.handle(&data);
                    }
                }
            }
        }
    }

    /// Queues what one event says. Nothing counts after `[DONE]` or an error.
    fn handle(&mut self, data: &str) {
        if self.done {
            return;
        }
        match parse_event(&self.url, data) {
            Ok((parsed, usage)) => {
                if let Some(u) = usage {
                    self.usage.set(u);
                }
                match parsed {
                    Parsed::Text(t) => self.ready.push_back(Ok(AiEvent::Text(t))),
                    Parsed::Queued(ahead) => self.ready.push_back(Ok(AiEvent::Queued { ahead })),
                    Parsed::Done => {
                        self.done = true;
                        self.saw_done = true;
                    }
                    Parsed::Nothing => {}
                }
            }
            Err(e) => {
                self.ready.push_back(Err(e));
                self.done = true;
            }
        }
    }
}

#[async_trait::async_trait]
impl ChatBackend for OpenAiBackend {
    fn model(&self) -> String {
        self.config.model.clone()
    }

    async fn stream_events(
        &self,
        request: ChatRequest,
    ) -> Result<(EventStream, UsageReport), AiError> {
        request.validate()?;
        let deadline = Instant::now() + self.config.first_token_timeout;
        let key = self.key(&request);
        let resp = self.send(&self.body(&request, true), key, deadline).await?;
        let usage = UsageReport::default();
        let url = self.config.base_url.clone();
        let is_sse = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            // A server that ignores `stream: true` answers with one JSON body.
            let text = tokio::time::timeout_at(deadline, resp.text())
                .await
                .map_err(|_| AiError::Timeout {
                    url: url.clone(),
                    after: self.config.first_token_timeout,
                })?
                .map_err(|e| AiError::Unreachable {
                    url: url.clone(),
                    reason: error_chain(&e),
                })?;
            let (parsed, reported) = parse_event(&url, &text)?;
            if let Some(u) = reported {
                usage.set(u);
            }
            let item = match parsed {
                Parsed::Text(t) => Some(Ok(AiEvent::Text(t))),
                _ => None,
            };
            return Ok((Box::pin(stream::iter(item)), usage));
        }
        let state = StreamState {
            url,
            body: resp.bytes_stream().boxed(),
            decoder: SseDecoder::default(),
            ready: VecDeque::new(),
            first_deadline: Some(deadline),
            first_timeout: self.config.first_token_timeout,
            idle_timeout: self.config.idle_timeout,
            done: false,
            saw_done: false,
            usage: usage.clone(),
        };
        let text = stream::unfold(state, |mut s| async move {
            s.next_item().await.map(|item| (item, s))
        });
        Ok((Box::pin(text), usage))
    }

    async fn complete(&self, request: ChatRequest) -> Result<String, AiError> {
        request.validate()?;
        let deadline = Instant::now() + self.config.first_token_timeout;
        let key = self.key(&request);
        let resp = self
            .send(&self.body(&request, false), key, deadline)
            .await?;
        let url = self.config.base_url.clone();
        let text = tokio::time::timeout_at(deadline, resp.text())
            .await
            .map_err(|_| AiError::Timeout {
                url: url.clone(),
                after: self.config.first_token_timeout,
            })?
            .map_err(|e| AiError::Unreachable {
                url: url.clone(),
                reason: error_chain(&e),
            })?;
        match parse_event(&url, &text)?.0 {
            Parsed::Text(t) => Ok(t),
            _ => Ok(String::new()),
        }
    }
}
