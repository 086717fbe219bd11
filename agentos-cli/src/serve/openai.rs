//! The OpenAI chat-completions wire format: requests as clients send them, and how they map
//! onto a kernel request (messages, tools, grammar, sampling).

use agentos_kernel::{ChatMessage, Constraint, Grammar, SamplingParams};
use agentos_runtime::syscall::wire::{
    TOOL_CALL_CLOSE, TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN, ToolDescription, ToolFormat, call_grammar, call_text,
    result_text, tools_prompt,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// `POST /v1/chat/completions`. Fields clients send that change nothing here (`user`,
/// `parallel_tool_calls`, `metadata`, ...) are accepted and ignored; ones whose meaning this
/// server cannot honour (`n` above 1, `logprobs`, non-zero penalties) are refused.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<RequestMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub n: Option<u32>,
    pub tools: Option<Vec<ToolDef>>,
    pub tool_choice: Option<ToolChoiceRequest>,
    pub response_format: Option<ResponseFormat>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logprobs: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct RequestMessage {
    pub role: String,
    pub content: Option<Content>,
    pub tool_calls: Option<Vec<ToolCallRequest>>,
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ToolCallRequest {
    pub id: String,
    pub function: FunctionCall,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Deserialize)]
pub struct ToolDef {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Debug, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ToolChoiceRequest {
    Mode(String),
    Named { function: NamedFunction },
}

#[derive(Debug, Deserialize)]
pub struct NamedFunction {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Deserialize)]
pub struct JsonSchemaFormat {
    pub schema: Option<Value>,
}

/// A request the client got wrong: HTTP 400 with OpenAI's `invalid_request_error`.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub message: String,
    pub param: Option<&'static str>,
}

fn bad(message: impl Into<String>, param: &'static str) -> BadRequest {
    BadRequest {
        message: message.into(),
        param: Some(param),
    }
}

/// What the kernel is asked, built from a request.
#[derive(Debug, Clone)]
pub struct Planned {
    pub messages: Vec<ChatMessage>,
    /// Continue the last (assistant) message: a tool result was written into it.
    pub continue_last: bool,
    /// Tools for a template's own tools branch (OpenAI function objects).
    pub template_tools: Vec<Value>,
    pub constraint: Option<Constraint>,
    pub sampling: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// The reply may hold a `<tool_call>`, to be returned as `tool_calls`.
    pub tools_active: bool,
}

impl ChatRequest {
    /// Checks the request and plans the kernel request. `template_tools`: the model's chat
    /// template renders tools itself (else they go into the system prompt, SmolLM2's format).
    pub fn plan(&self, template_tools: bool) -> Result<Planned, BadRequest> {
        if self.messages.is_empty() {
            return Err(bad("`messages` is empty", "messages"));
        }
        self.check_unsupported()?;
        let sampling = SamplingParams {
            // OpenAI's defaults: temperature 1, top_p 1.
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k: 0,
            repetition_penalty: 1.0,
            seed: match self.seed {
                Some(seed) => seed as u64,
                None => random_seed(),
            },
        };
        sampling.validate().map_err(|e| {
            bad(
                e.to_string(),
                if self.temperature.is_some() {
                    "temperature"
                } else {
                    "top_p"
                },
            )
        })?;
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(0) => return Err(bad("max_tokens must be at least 1", "max_tokens")),
            other => other.map(|n| n as usize),
        };
        let mut stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        stop.retain(|s| !s.is_empty());
        if stop.len() > 4 {
            return Err(bad("at most 4 stop sequences", "stop"));
        }
        let tools = self.selected_tools()?;
        let format = match template_tools {
            true => ToolFormat::Template,
            false => ToolFormat::SystemPrompt,
        };
        let (mut messages, continue_last) = render_messages(&self.messages, format)?;
        let mut template_tools_out = Vec::new();
        let constraint;
        let tools_active = tools.is_some();
        if let Some((tools, forced)) = tools {
            if self
                .response_format
                .as_ref()
                .is_some_and(|f| !matches!(f, ResponseFormat::Text))
            {
                return Err(bad(
                    "use `tools` or a JSON `response_format`, not both",
                    "response_format",
                ));
            }
            match format {
                ToolFormat::Template => {
                    template_tools_out = agentos_runtime::syscall::wire::tool_objects(&tools);
                }
                ToolFormat::SystemPrompt => {
                    let block = tools_prompt(&tools);
                    match messages.first_mut() {
                        Some(first) if first.role == "system" => first.content.push_str(&block),
                        _ => messages.insert(0, ChatMessage::system(block.trim_start().to_string())),
                    }
                }
            }
            constraint = Some(call_grammar(&tools, forced));
            stop.extend([TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE].map(String::from));
        } else {
            constraint = match &self.response_format {
                None | Some(ResponseFormat::Text) => None,
                Some(ResponseFormat::JsonObject) => Some(json_constraint(json!({"type": "object"}))),
                Some(ResponseFormat::JsonSchema { json_schema }) => match &json_schema.schema {
                    Some(schema) => Some(json_constraint(schema.clone())),
                    None => return Err(bad("json_schema needs a `schema`", "response_format")),
                },
            };
        }
        Ok(Planned {
            messages,
            continue_last,
            template_tools: template_tools_out,
            constraint,
            sampling,
            max_tokens,
            stop,
            tools_active,
        })
    }

    /// The task of an `agent:NAME` request: its last user message. The same fields are refused
    /// as for the model; `tools` and `response_format` too (an agent uses its own tools, and
    /// its replies are free text).
    pub fn agent_task(&self) -> Result<String, BadRequest> {
        self.check_unsupported()?;
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(bad(
                "an agent calls its own tools; send `tools` to the model instead",
                "tools",
            ));
        }
        if self
            .response_format
            .as_ref()
            .is_some_and(|f| !matches!(f, ResponseFormat::Text))
        {
            return Err(bad(
                "an agent answers in free text; send `response_format` to the model instead",
                "response_format",
            ));
        }
        let user = self
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .ok_or_else(|| bad("an agent request needs a user message (its task)", "messages"))?;
        let task = content_text(&user.content)?;
        if task.trim().is_empty() {
            return Err(bad("the user message is empty", "messages"));
        }
        Ok(task)
    }

    /// Refuses what this server cannot honour rather than ignore it.
    fn check_unsupported(&self) -> Result<(), BadRequest> {
        if self.n.unwrap_or(1) != 1 {
            return Err(bad("only n = 1 is supported", "n"));
        }
        if self.logprobs == Some(true) {
            return Err(bad("logprobs are not supported", "logprobs"));
        }
        for (value, name) in [
            (self.presence_penalty, "presence_penalty"),
            (self.frequency_penalty, "frequency_penalty"),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(bad(format!("{name} is not supported (only 0)"), name));
            }
        }
        Ok(())
    }

    /// The tools the reply may call and whether it must call one; `None`: no tools (none
    /// given, or `tool_choice` is `none`).
    fn selected_tools(&self) -> Result<Option<(Vec<ToolDescription>, bool)>, BadRequest> {
        let Some(defs) = self.tools.as_ref().filter(|t| !t.is_empty()) else {
            if let Some(ToolChoiceRequest::Named { .. }) = &self.tool_choice {
                return Err(bad(
                    "tool_choice names a function but there are no tools",
                    "tool_choice",
                ));
            }
            return Ok(None);
        };
        let mut tools = Vec::with_capacity(defs.len());
        for def in defs {
            if def.kind != "function" {
                return Err(bad(
                    format!("tool type `{}` is not supported (only function)", def.kind),
                    "tools",
                ));
            }
            let name = def.function.name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(bad(
                    format!("function name `{}` must be letters, digits, _ or -", def.function.name),
                    "tools",
                ));
            }
            let parameters = def
                .function
                .parameters
                .clone()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            if !parameters.is_object() {
                return Err(bad(
                    format!("`{name}`'s parameters must be a JSON Schema object"),
                    "tools",
                ));
            }
            tools.push(ToolDescription {
                name: name.to_string(),
                description: def.function.description.clone().unwrap_or_default(),
                parameters,
            });
        }
        match &self.tool_choice {
            None => Ok(Some((tools, false))),
            Some(ToolChoiceRequest::Mode(mode)) => match mode.as_str() {
                "auto" => Ok(Some((tools, false))),
                "required" => Ok(Some((tools, true))),
                "none" => Ok(None),
                other => Err(bad(
                    format!("tool_choice `{other}`: use auto, none, required or a function"),
                    "tool_choice",
                )),
            },
            Some(ToolChoiceRequest::Named { function }) => {
                let chosen: Vec<ToolDescription> = tools.into_iter().filter(|t| t.name == function.name).collect();
                if chosen.is_empty() {
                    return Err(bad(
                        format!("tool_choice names `{}`, which is not in tools", function.name),
                        "tool_choice",
                    ));
                }
                Ok(Some((chosen, true)))
            }
        }
    }
}

fn json_constraint(schema: Value) -> Constraint {
    Constraint {
        grammar: Grammar::JsonSchema(schema),
        after: None,
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

/// The text of a message's content (text parts joined; other parts refused).
fn content_text(content: &Option<Content>) -> Result<String, BadRequest> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text.clone()),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for part in parts {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(text)) => out.push_str(text),
                    (kind, _) => {
                        return Err(bad(
                            format!("content part `{kind}` is not supported (text only)"),
                            "messages",
                        ));
                    }
                }
            }
            Ok(out)
        }
    }
}

/// The conversation as chat messages for the template. An assistant message's calls are
/// written as the model writes them (`<tool_call>` tags); a tool result goes where `format`
/// puts it: for [`ToolFormat::SystemPrompt`] into the assistant's turn after its call (which
/// the model then continues: the second value), for [`ToolFormat::Template`] as a `tool`
/// message.
pub fn render_messages(
    messages: &[RequestMessage],
    format: ToolFormat,
) -> Result<(Vec<ChatMessage>, bool), BadRequest> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    // Call id -> function name, from the assistant messages so far.
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut continue_last = false;
    for message in messages {
        let text = content_text(&message.content)?;
        continue_last = false;
        match message.role.as_str() {
            "system" | "developer" => out.push(ChatMessage::system(text)),
            "user" => out.push(ChatMessage::user(text)),
            "assistant" => {
                let mut content = text;
                for call in message.tool_calls.iter().flatten() {
                    let arguments: Value = serde_json::from_str(&call.function.arguments).map_err(|e| {
                        bad(
                            format!("tool call `{}` has arguments that are not JSON: {e}", call.id),
                            "messages",
                        )
                    })?;
                    if !content.is_empty() && !content.ends_with('\n') {
                        content.push('\n');
                    }
                    content.push_str(&call_text(&call.function.name, &arguments));
                    calls.push((call.id.clone(), call.function.name.clone()));
                }
                out.push(ChatMessage::assistant(content));
            }
            "tool" => {
                let id = message
                    .tool_call_id
                    .as_deref()
                    .ok_or_else(|| bad("a tool message needs `tool_call_id`", "messages"))?;
                let name = calls
                    .iter()
                    .find(|(call, _)| call == id)
                    .map(|(_, name)| name.clone())
                    .ok_or_else(|| {
                        bad(
                            format!("tool message answers `{id}`, which no assistant message called"),
                            "messages",
                        )
                    })?;
                // A result that is JSON is shown as that JSON, anything else as text.
                let value = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                let result = result_text(&name, &Ok(value), usize::MAX, format);
                match format {
                    ToolFormat::Template => out.push(ChatMessage::new("tool", result)),
                    ToolFormat::SystemPrompt => match out.last_mut() {
                        Some(last) if last.role == "assistant" => {
                            last.content.push('\n');
                            last.content.push_str(&result);
                            continue_last = true;
                        }
                        _ => {
                            return Err(bad(
                                "a tool message must follow the assistant message that called it",
                                "messages",
                            ));
                        }
                    },
                }
            }
            other => return Err(bad(format!("unknown role `{other}`"), "messages")),
        }
    }
    Ok((out, continue_last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_call_and_its_result_stay_in_the_assistant_turn_for_smollm2() {
        let r = request(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "add 2 and 3"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":2,\"b\":3}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "5"}
            ],
            "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
        }));
        let planned = r.plan(false).unwrap();
        assert!(planned.continue_last);
        assert_eq!(planned.messages[0].role, "system");
        assert!(planned.messages[0].content.contains("<tools>"));
        let last = planned.messages.last().unwrap();
        assert_eq!(last.role, "assistant");
        assert!(last.content.contains("<tool_call>"), "{}", last.content);
        assert!(
            last.content.ends_with("<tool_response>\n5\n</tool_response>"),
            "{}",
            last.content
        );
        assert!(planned.tools_active);
        assert!(planned.stop.contains(&TOOL_CALL_CLOSE.to_string()));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let with = |key: &str, value: Value| {
            let mut body = base.clone();
            body[key] = value;
            request(body).plan(false).unwrap_err().param
        };
        assert_eq!(with("n", json!(2)), Some("n"));
        assert_eq!(with("logprobs", json!(true)), Some("logprobs"));
        assert_eq!(with("presence_penalty", json!(0.5)), Some("presence_penalty"));
        assert_eq!(with("temperature", json!(-1.0)), Some("temperature"));
        assert_eq!(with("max_tokens", json!(0)), Some("max_tokens"));
        assert_eq!(
            with("tool_choice", json!({"type": "function", "function": {"name": "x"}})),
            Some("tool_choice")
        );
        let mut orphan = base.clone();
        orphan["messages"] = json!([{"role": "tool", "tool_call_id": "nope", "content": "1"}]);
        assert_eq!(request(orphan).plan(false).unwrap_err().param, Some("messages"));
        assert!(request(base).plan(false).is_ok());
    }

    #[test]
    fn tool_choice_picks_the_grammar() {
        let body = |choice: Value| {
            request(json!({
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [
                    {"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
                    {"type": "function", "function": {"name": "b", "parameters": {"type": "object"}}}
                ],
                "tool_choice": choice
            }))
        };
        let auto = body(json!("auto")).plan(false).unwrap();
        assert_eq!(auto.constraint.unwrap().after.as_deref(), Some("<tool_call>"));
        let forced = body(json!("required")).plan(false).unwrap();
        assert!(forced.constraint.unwrap().after.is_none());
        let none = body(json!("none")).plan(false).unwrap();
        assert!(none.constraint.is_none() && !none.tools_active);
        let named = body(json!({"type": "function", "function": {"name": "b"}}))
            .plan(false)
            .unwrap();
        match named.constraint.unwrap().grammar {
            Grammar::Lark(lark) => assert!(lark.contains("\"b\"") && !lark.contains("\"a\""), "{lark}"),
            other => panic!("{other:?}"),
        }
    }
}
