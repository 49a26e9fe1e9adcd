//! A native chat participant: a joined session running the relay loop ([`crate::relay`])
//! with synq-ai's HTTP client as the AI service and tokio's timer.

// Not model code: the native participant (tokio, the AI backend); the chat's model
// (`model`, `prompt`, `hygiene`) is checked by clippy.toml's determinism rules.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use synq_ai::{AiError, AiEvent, Bearer, ChatBackend, ChatMessage, ChatRequest, EventStream, Role};
use synq_client::{ClientConfig, ClientError, Session, SessionEvent, SessionHandle, join};
use synq_relay::{BoxFut, Progress, RelayService, TextStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::model::{ChatInput, ChatModel, ChatOutput, ChatViewData, queue_status};
use crate::prompt::{AiRequest, PromptRole};
use crate::relay::{self, MAX_ANSWER_TOKENS};

/// Calls the AI through any [`ChatBackend`] (the gateway of `synq serve`, an
/// OpenAI-compatible upstream, or the embedded model).
pub struct AiService(pub Arc<dyn ChatBackend>);

fn chat_request(request: AiRequest) -> ChatRequest {
    let messages = request
        .messages
        .into_iter()
        .map(|m| ChatMessage {
            role: match m.role {
                PromptRole::System => Role::System,
                PromptRole::Assistant => Role::Assistant,
                PromptRole::User => Role::User,
            },
            content: m.content,
        })
        .collect();
    ChatRequest::new(messages)
        .max_tokens(MAX_ANSWER_TOKENS)
        .temperature(request.sampling.temperature())
}

/// The answer as the relay publishes it: text, and the place in the AI service's queue as
/// the entry's status.
fn progress(events: EventStream) -> TextStream {
    events
        .map(|e| match e {
            Ok(AiEvent::Text(t)) => Ok(Progress::Text(t)),
            Ok(AiEvent::Queued { ahead }) => Ok(Progress::Status(queue_status(ahead))),
            Err(e) => Err(e.to_string()),
        })
        .boxed()
}

impl RelayService<AiRequest> for AiService {
    fn call(&self, request: AiRequest) -> BoxFut<Result<TextStream, String>> {
        let backend = Arc::clone(&self.0);
        Box::pin(async move {
            let (events, _) = backend
                .stream_events(chat_request(request))
                .await
                .map_err(|e| e.to_string())?;
            Ok(progress(events))
        })
    }
}

/// The AI service as a participant calls it: with the AI capability its server handed it
/// (the gateway of `synq serve` asks for one). If the gateway refuses the capability (it
/// expired: the participant stayed connected longer than its lifetime), the participant
/// rejoins, which brings a new one for the next request.
struct WithCapability {
    service: Arc<AiService>,
    handle: SessionHandle<ChatModel>,
}

impl RelayService<AiRequest> for WithCapability {
    fn call(&self, request: AiRequest) -> BoxFut<Result<TextStream, String>> {
        let backend = Arc::clone(&self.service.0);
        let handle = self.handle.clone();
        Box::pin(async move {
            let token = handle.ai_token();
            let mut req = chat_request(request);
            req.bearer = token.clone().map(Bearer);
            match backend.stream_events(req).await {
                Ok((events, _)) => Ok(progress(events)),
                Err(AiError::Unauthorized { .. }) if token.is_some() => {
                    handle.reconnect();
                    Err("the server did not accept this participant's AI capability; it rejoins to get a new one, try again".into())
                }
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// Any other AI service (a bot's own upstream or model): the room's capability is the
/// room server's and must never reach a third party, so calls carry none.
enum Route {
    Gateway(WithCapability),
    Own(Arc<AiService>),
}

impl RelayService<AiRequest> for Route {
    fn call(&self, request: AiRequest) -> BoxFut<Result<TextStream, String>> {
        match self {
            Route::Gateway(service) => service.call(request),
            Route::Own(service) => service.call(request),
        }
    }
}

/// How a participant relays the room's AI requests when it is elected to.
pub struct Relaying {
    pub service: Arc<AiService>,
    /// Its preference in the election (`synq_relay::Candidacy`): browser tabs and
    /// `synq chat` declare 0; a service that should take over from them (`synq bot`) more.
    pub preference: i32,
    /// Whether `service` is the AI gateway of the room's server: calls then carry the AI
    /// capability the server handed this participant. Otherwise they carry none.
    pub gateway: bool,
}

/// A joined participant whose relay agent runs in the background.
pub struct Participant {
    handle: SessionHandle<ChatModel>,
    changes: watch::Receiver<u64>,
    events: Arc<std::sync::Mutex<Vec<SessionEvent<ChatOutput>>>>,
    pump: JoinHandle<()>,
}

impl Participant {
    /// Joins as `name`. With a `service` (the AI gateway of the room's server), this
    /// participant can be elected to call the AI.
    pub async fn join(
        config: ClientConfig,
        name: &str,
        service: Option<Arc<AiService>>,
    ) -> Result<Participant, ClientError> {
        let relaying = service.map(|service| Relaying {
            service,
            preference: 0,
            gateway: true,
        });
        Self::join_relaying(config, name, relaying).await
    }

    /// Joins as `name`; with `relaying`, this participant can be elected to call the AI.
    pub async fn join_relaying(
        config: ClientConfig,
        name: &str,
        relaying: Option<Relaying>,
    ) -> Result<Participant, ClientError> {
        let data = ChatViewData {
            name: name.to_owned(),
            candidacy: synq_relay::Candidacy {
                can_relay: relaying.is_some(),
                preference: relaying.as_ref().map_or(0, |r| r.preference),
            },
        };
        let session = join::<ChatModel>(config, data).await?;
        let handle = session.handle();
        let (tx, changes) = watch::channel(0);
        let events = Arc::default();
        let pump = tokio::spawn(pump(session, relaying, tx, Arc::clone(&events)));
        Ok(Participant {
            handle,
            changes,
            events,
            pump,
        })
    }

    pub fn handle(&self) -> &SessionHandle<ChatModel> {
        &self.handle
    }

    pub fn post(&self, text: &str) -> Result<(), ClientError> {
        self.handle.publish(ChatInput::post(text))
    }

    /// Posts `text` as a question for the AI (answered in any mode but off).
    pub fn ask(&self, text: &str) -> Result<(), ClientError> {
        self.handle.publish(ChatInput::ask(text))
    }

    pub fn read<R>(&self, f: impl FnOnce(&ChatModel) -> R) -> Option<R> {
        self.handle.read(f)
    }

    /// Events other than outputs (syncs, reconnects, rejections, failures), for display.
    pub fn take_events(&self) -> Vec<SessionEvent<ChatOutput>> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits for the next change of the model or of the session's events; `Err` once the
    /// session has ended.
    pub async fn changed(&mut self) -> Result<(), ClientError> {
        self.changes.changed().await.map_err(|_| ClientError::Ended)
    }

    /// Waits until `pred` holds for the model (re-checked on every change).
    pub async fn until(&mut self, pred: impl Fn(&ChatModel) -> bool) -> Result<(), ClientError> {
        loop {
            if self.handle.read(&pred).unwrap_or(false) {
                return Ok(());
            }
            self.changes
                .changed()
                .await
                .map_err(|_| ClientError::Ended)?;
        }
    }

    /// Stops at once: calls in progress are cancelled (the upstream request is dropped)
    /// and the session is left.
    pub fn kill(self) {
        self.pump.abort();
    }
}

async fn pump(
    session: Session<ChatModel>,
    relaying: Option<Relaying>,
    changes: watch::Sender<u64>,
    events: Arc<std::sync::Mutex<Vec<SessionEvent<ChatOutput>>>>,
) {
    let service = relaying.map(|r| {
        Arc::new(if r.gateway {
            Route::Gateway(WithCapability {
                service: r.service,
                handle: session.handle(),
            })
        } else {
            Route::Own(r.service)
        })
    });
    let sleep = |d: Duration| -> BoxFut<()> { Box::pin(tokio::time::sleep(d)) };
    relay::run(
        session,
        service,
        sleep,
        // Views show "connected" again after a reconnect: Synced is kept too.
        |event| {
            events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
        },
        || changes.send_modify(|v| *v += 1),
    )
    .await;
}
