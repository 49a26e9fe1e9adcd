//! Chat templates: how a conversation becomes the token sequence a model was trained on.
//!
//! GGUF files carry a Jinja template (`tokenizer.chat_template`); rather than embed a Jinja
//! engine, we recognise the two families the supported models use and render them in code.

use crate::{ChatMessage, Role};

use super::gguf_tokenizer::GgufTokenizer;

/// The supported template families.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n…<|im_end|>\n` (SmolLM2, Qwen2.5). `default_system` is the system
    /// prompt the model's template inserts when the conversation has none.
    ChatMl { default_system: Option<String> },
    /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>` (Llama 3.x).
    Llama3,
}

/// A piece of the rendered prompt: template markup (special tokens are parsed) or message
/// content (special-token text stays plain text, so users cannot forge turns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Markup(String),
    Content(String),
}

/// Tokens that end the assistant's turn, when the model's vocabulary has them.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|endoftext|>",
    "<|end_of_text|>",
];

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

impl ChatTemplate {
    /// Chooses the template from the GGUF's `tokenizer.chat_template` and vocabulary.
    pub fn detect(template: Option<&str>, tokenizer: &GgufTokenizer) -> Self {
        let has = |t: &str| tokenizer.token_id(t).is_some();
        let llama3_vocab = has("<|start_header_id|>") && has("<|eot_id|>");
        let llama3_template = template.is_none_or(|t| t.contains("<|start_header_id|>"));
        if llama3_vocab && llama3_template {
            return ChatTemplate::Llama3;
        }
        if !has("<|im_start|>") {
            tracing::warn!("the model has neither ChatML nor Llama 3 chat tokens; using ChatML");
        }
        ChatTemplate::ChatMl {
            default_system: template.and_then(chatml_default_system),
        }
    }

    /// The conversation followed by the generation prompt for the assistant's answer.
    pub fn render(&self, messages: &[ChatMessage]) -> Vec<Piece> {
        let mut out = Vec::new();
        match self {
            ChatTemplate::ChatMl { default_system } => {
                if let Some(system) = default_system
                    && messages.first().is_none_or(|m| m.role != Role::System)
                {
                    out.push(Piece::Markup("<|im_start|>system\n".into()));
                    out.push(Piece::Content(system.clone()));
                    out.push(Piece::Markup("<|im_end|>\n".into()));
                }
                for m in messages {
                    out.push(Piece::Markup(format!(
                        "<|im_start|>{}\n",
                        role_name(m.role)
                    )));
                    out.push(Piece::Content(m.content.clone()));
                    out.push(Piece::Markup("<|im_end|>\n".into()));
                }
                out.push(Piece::Markup("<|im_start|>assistant\n".into()));
            }
            ChatTemplate::Llama3 => {
                out.push(Piece::Markup("<|begin_of_text|>".into()));
                for m in messages {
                    out.push(Piece::Markup(format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n",
                        role_name(m.role)
                    )));
                    // Llama 3's template trims the content.
                    out.push(Piece::Content(m.content.trim().to_string()));
                    out.push(Piece::Markup("<|eot_id|>".into()));
                }
                out.push(Piece::Markup(
                    "<|start_header_id|>assistant<|end_header_id|>\n\n".into(),
                ));
            }
        }
        out
    }

    /// The ids that end generation: the end-of-turn tokens the vocabulary has, and eos.
    pub fn stop_tokens(&self, tokenizer: &GgufTokenizer) -> Vec<u32> {
        let mut ids: Vec<u32> = END_OF_TURN
            .iter()
            .filter_map(|t| tokenizer.token_id(t))
            .chain(tokenizer.eos_token_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// The system prompt a ChatML Jinja template inserts when there is none, such as SmolLM2's
/// "You are a helpful AI assistant named SmolLM, trained by Hugging Face": the first
/// `<|im_start|>system\n` followed by literal text up to `<|im_end|>`.
fn chatml_default_system(template: &str) -> Option<String> {
    const START: &str = "<|im_start|>system";
    let mut rest = template;
    while let Some(at) = rest.find(START) {
        rest = &rest[at + START.len()..];
        let body = rest
            .strip_prefix('\n')
            .or_else(|| rest.strip_prefix("\\n"))
            .unwrap_or(rest);
        if let Some(end) = body.find("<|im_end|>") {
            let text = &body[..end];
            let literal = !text.is_empty()
                && !text.contains(['\'', '"', '{', '}', '+', '\n'])
                && !text.contains("\\n");
            if literal {
                return Some(text.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{ChatTemplate, Piece, chatml_default_system};
    use crate::ChatMessage;

    fn text(pieces: &[Piece]) -> String {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Markup(s) | Piece::Content(s) => s.as_str(),
            })
            .collect()
    }

    #[test]
    fn chatml_and_llama3_render_the_conversation_and_the_generation_prompt() {
        let chatml = ChatTemplate::ChatMl {
            default_system: Some("Be brief.".into()),
        };
        let without_system = [ChatMessage::user("Hi")];
        assert_eq!(
            text(&chatml.render(&without_system)),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_system = [
            ChatMessage::system("You help."),
            ChatMessage::user("Hi"),
            ChatMessage::assistant("Hello!"),
            ChatMessage::user("Bye"),
        ];
        assert_eq!(
            text(&chatml.render(&with_system)),
            "<|im_start|>system\nYou help.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            text(&ChatTemplate::Llama3.render(&with_system[..2])),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou help.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        // Message contents are never markup.
        assert!(
            chatml
                .render(&without_system)
                .contains(&Piece::Content("Hi".into()))
        );
    }

    #[test]
    fn default_system_prompt_is_found_in_smollm2_and_qwen25_templates() {
        let smol = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}";
        assert_eq!(
            chatml_default_system(smol).as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        let qwen = "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n {%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}";
        assert_eq!(
            chatml_default_system(qwen).as_deref(),
            Some("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
        );
        assert_eq!(chatml_default_system("{{ '<|im_start|>' + role }}"), None);
    }
}
