//! Reading an OpenAI-style request leniently (text parts, the `developer` role) into a
//! backend request, with the server's limits.

use serde_json::Value;

use super::GatewayState;
use super::api_error::ApiError;
use crate::backend::{ChatMessage, ChatRequest, Role};

/// Reads OpenAI-style messages; `content` may be a string or a list of text parts.
fn parse_messages(v: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    let list = v
        .as_array()
        .ok_or_else(|| ApiError::bad_request("`messages` must be a list of {role, content}"))?;
    list.iter()
        .map(|m| {
            let role = match m.get("role").and_then(Value::as_str) {
                Some("system" | "developer") => Role::System,
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unsupported message role {other:?}; use system, user or assistant"
                    )));
                }
            };
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
                Some(Value::Null) | None => String::new(),
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "message `content` must be a string or a list of text parts",
                    ));
                }
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

/// Builds the backend request: the client's sampling options, `max_tokens` clamped to the
/// server's cap. A client's `model` is deliberately not read.
pub(super) fn chat_request(
    state: &GatewayState,
    body: &Value,
    messages: &Value,
) -> Result<ChatRequest, ApiError> {
    let cap = state.config.max_tokens;
    let asked = body
        .get("max_tokens")
        .or_else(|| body.get("max_completion_tokens"))
        .and_then(Value::as_u64);
    let mut request = ChatRequest::new(parse_messages(messages)?);
    request.max_tokens = asked.map_or(cap, |n| n.min(u64::from(cap)) as u32);
    request.temperature = body
        .get("temperature")
        .and_then(Value::as_f64)
        .map(|t| t as f32);
    request.top_p = body.get("top_p").and_then(Value::as_f64).map(|t| t as f32);
    request.seed = body.get("seed").and_then(Value::as_u64);
    request.validate()?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{BackendSlot, BackendState, GatewayConfig};
    use axum::http::StatusCode;
    use serde_json::json;

    #[test]
    fn messages_accept_text_parts_and_the_developer_role_and_refuse_unknown_roles() {
        let m = parse_messages(&json!([
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null},
        ]))
        .expect("valid");
        assert_eq!(
            m,
            [
                ChatMessage::system("rules"),
                ChatMessage::user("ab"),
                ChatMessage::assistant("")
            ]
        );
        let err = parse_messages(&json!([{"role": "tool", "content": "x"}])).expect_err("tool");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(parse_messages(&json!("hi")).is_err());
    }

    #[test]
    fn max_tokens_is_clamped_defaulted_and_the_model_never_read() {
        let state = GatewayState::new(
            GatewayConfig {
                max_tokens: 100,
                ..GatewayConfig::default()
            },
            BackendSlot::new(BackendState::Unavailable("test".into())),
        );
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let r = |body: Value| chat_request(&state, &body, &msgs);
        assert_eq!(r(json!({"max_tokens": 5000})).expect("ok").max_tokens, 100);
        assert_eq!(
            r(json!({"max_completion_tokens": 7}))
                .expect("ok")
                .max_tokens,
            7
        );
        assert_eq!(r(json!({})).expect("ok").max_tokens, 100);
        assert!(r(json!({"max_tokens": 0})).is_err());
        let with_options =
            r(json!({"temperature": 0.5, "top_p": 0.9, "seed": 7, "model": "x"})).expect("ok");
        assert_eq!(with_options.temperature, Some(0.5));
        assert_eq!(with_options.seed, Some(7));
    }
}
