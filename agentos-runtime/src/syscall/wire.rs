//! The wire format between the model and the runtime: how tools are shown, how calls are
//! written, how results come back.
//!
//! Calls are always written the same way: `<tool_call>{"name": "fs_read", "arguments": {"path":
//! "a.txt"}}</tool_call>`. Generation stops at `</tool_call>` (a stop string) or, under the
//! call grammar, where the call's JSON ends: one call per step. The call in the assistant
//! message that the next step replays is written the same way.
//!
//! Where the tools and results go depends on the model's chat template ([`ToolFormat`]):
//!
//! - **The template's own tools branch** ([`ToolFormat::Template`]), when the template has one
//!   whose calls are `<tool_call>` tags (Hermes, Qwen2.5, SmolLM3): the tools go to the template
//!   as OpenAI function objects ([`tool_objects`]), which writes them and its calling
//!   instructions as the model was trained to read them; a result is a `tool` message whose
//!   content is `{"name": …, "content": …}` (or `"error"`), wrapped as the template wraps it.
//! - **Otherwise** ([`ToolFormat::SystemPrompt`]), SmolLM2's case, the Hermes convention that
//!   SmolLM2 and Hermes-style models were trained on: the system prompt ends with the tool list,
//!   one function object per line inside `<tools>…</tools>`, with instructions
//!   ([`tools_prompt`]); a result is `<tool_response>{"name": …, "content": …}</tool_response>`
//!   written after its call in the assistant's own turn, which the model then continues (the
//!   agent's prompt sets `TurnPrompt::continue_last`).

use agentos_kernel::{Constraint, Grammar};
use serde_json::{Value, json};

use crate::syscall::SyscallError;

pub const TOOL_CALL_OPEN: &str = "<tool_call>";
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";
/// Opens a result. Only the runtime writes results: a generation that writes this tag or
/// [`TOOL_RESPONSE_CLOSE`] itself (a small model repeating the last result, inventing one, or
/// carrying on markup that a tool's output imitated) stops there.
pub const TOOL_RESPONSE_OPEN: &str = "<tool_response>";
/// Closes a result.
pub const TOOL_RESPONSE_CLOSE: &str = "</tool_response>";
/// The chat role of a call's result.
pub const TOOL_ROLE: &str = "tool";

/// A tool as the prompt shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDescription {
    pub name: String,
    pub description: String,
    /// The JSON Schema of its arguments.
    pub parameters: Value,
}

/// Where an agent's tool list and call results are written (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// The model's chat template renders the tools and results (its tools branch).
    Template,
    /// The runtime writes the tools into the system prompt, and calls and their results
    /// (`<tool_response>`) into the assistant's turn, which the model continues.
    SystemPrompt,
}

/// The tools as OpenAI function objects, the form chat templates and the prompt block take:
/// `{"type": "function", "function": {"name", "description", "parameters"}}`.
pub fn tool_objects(tools: &[ToolDescription]) -> Vec<Value> {
    tools
        .iter()
        .map(|tool| {
            json!({
                "type": "function",
                "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
            })
        })
        .collect()
}

/// The block appended to an agent's system prompt when it has tools and the template has no
/// tools branch. It ends by asking for an answer in words from the result: the models this
/// format is for are small, and told "when you have the answer, reply without a call",
/// SmolLM2-135M more often described the result instead of answering (`tools_bench --set
/// other`: task success 0.37 against 0.47 on average over four seeds; the standard set alike,
/// 0.84 against 0.86 over six). Further calls stay possible: the grammar forces no answer.
pub fn tools_prompt(tools: &[ToolDescription]) -> String {
    let mut out = String::from(
        "\n\nYou can call functions to do the task. The functions are listed, as JSON schemas, inside <tools></tools>:\n<tools>\n",
    );
    for entry in tool_objects(tools) {
        out.push_str(&entry.to_string());
        out.push('\n');
    }
    out.push_str(
        "</tools>\nTo call a function, write <tool_call>{\"name\": <function-name>, \"arguments\": <arguments-json-object>}</tool_call>. \
         Its result comes back inside <tool_response></tool_response>. Then answer the question in plain words, using the result.",
    );
    out
}

/// The grammar of a call to one of `tools`: `{"name": <a tool's name>, "arguments": <its
/// arguments' schema>}`. `forced`: the generation must open with `<tool_call>` and make the
/// call; otherwise it is free until the model writes `<tool_call>`, and the call is
/// constrained from there. Either way generation ends where the call's JSON does.
///
/// Arguments are generated with the properties their schema declares only: a schema that does
/// not say `additionalProperties` (as many MCP servers' do not) would otherwise let a small
/// model invent property after property until it runs out of tokens. A call with only declared
/// properties is valid against the original schema all the same.
pub fn call_grammar(tools: &[ToolDescription], forced: bool) -> Constraint {
    let alternatives: Vec<Value> = tools
        .iter()
        .map(|tool| {
            let mut arguments = tool.parameters.clone();
            if let Some(object) = arguments.as_object_mut()
                && object.contains_key("properties")
                && !object.contains_key("additionalProperties")
            {
                object.insert("additionalProperties".into(), Value::Bool(false));
            }
            json!({
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    // Compact separators, as the format's examples write calls: a call costs fewer tokens
    // than one the model pads with newlines and indentation.
    let schema = json!({
        "anyOf": alternatives,
        "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "},
    });
    match forced {
        true => Constraint {
            grammar: Grammar::Lark(format!(
                "start: \"{TOOL_CALL_OPEN}\" \"\\n\"? call\ncall: %json {schema}\n"
            )),
            after: None,
        },
        false => Constraint {
            grammar: Grammar::JsonSchema(schema),
            after: Some(TOOL_CALL_OPEN.to_string()),
        },
    }
}

/// What exists beneath the work directory: the paths a file call can succeed with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExistingPaths {
    /// Regular files (or links to one beneath the root), relative, `/`-separated, sorted.
    pub files: Vec<String>,
    /// Directories, `.` first, then relative and sorted.
    pub dirs: Vec<String>,
}

/// `tools` with the path of `fs_read` narrowed to the files that exist and the path of
/// `fs_list` to the directories (an `enum` in the argument's schema), for the call grammar: a
/// call the grammar allows then names something that exists instead of a plausible name that
/// fails. (Asked about "the file report-8.txt", SmolLM2-135M otherwise often writes
/// `file.txt`.) The tool list in the prompt is not changed: it stays a cacheable prefix while
/// files come and go. Paths longer than a call may carry
/// ([`MAX_NAME_CHARS`](crate::syscall::MAX_NAME_CHARS)) are left out; with none left, the
/// path stays free.
pub fn narrow_paths(tools: &[ToolDescription], paths: &ExistingPaths) -> Vec<ToolDescription> {
    let mut tools = tools.to_vec();
    for tool in &mut tools {
        let names = match tool.name.as_str() {
            "fs_read" => &paths.files,
            "fs_list" => &paths.dirs,
            _ => continue,
        };
        let names: Vec<&String> = names
            .iter()
            .filter(|name| name.chars().count() <= crate::syscall::MAX_NAME_CHARS)
            .collect();
        if names.is_empty() {
            continue;
        }
        if let Some(property) = tool.parameters.pointer_mut("/properties/path")
            && let Some(property) = property.as_object_mut()
        {
            property.insert("enum".into(), json!(names));
        }
    }
    tools
}

/// A reply split at its call: the text before `<tool_call>` and the call's body (up to
/// `</tool_call>` or the end, since generation stops at the closing tag). `None` when the reply
/// makes no call.
pub fn split_call(reply: &str) -> Option<(&str, &str)> {
    let start = reply.find(TOOL_CALL_OPEN)?;
    let body = &reply[start + TOOL_CALL_OPEN.len()..];
    let body = match body.find(TOOL_CALL_CLOSE) {
        Some(end) => &body[..end],
        None => body,
    };
    Some((&reply[..start], body))
}

/// Parses a call's body into its name and arguments. Lenient where models commonly differ
/// (surrounding whitespace or a Markdown code fence, `parameters` for `arguments`, arguments
/// given as a JSON string holding an object), strict about everything else.
pub fn parse_call(body: &str) -> Result<(String, Value), SyscallError> {
    let mut text = body.trim();
    if let Some(rest) = text.strip_prefix("```") {
        let rest = rest.strip_prefix("json").unwrap_or(rest);
        text = rest.strip_suffix("```").unwrap_or(rest).trim();
    }
    if text.is_empty() {
        return Err(SyscallError::Malformed("the call is empty".into()));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| SyscallError::Malformed(format!("not JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(SyscallError::Malformed(
            "a call is a JSON object {\"name\": ..., \"arguments\": {...}}".into(),
        ));
    };
    let name = match object.remove("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name.trim().to_string(),
        Some(_) => return Err(SyscallError::Malformed("`name` must be a non-empty string".into())),
        None => return Err(SyscallError::Malformed("the call has no `name`".into())),
    };
    let arguments = match (object.remove("arguments"), object.remove("parameters")) {
        (Some(_), Some(_)) => {
            return Err(SyscallError::Malformed(
                "give the arguments once, as `arguments`".into(),
            ));
        }
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => Value::Null,
    };
    if let Some(extra) = object.keys().next() {
        return Err(SyscallError::Malformed(format!(
            "unexpected key `{extra}` (a call has `name` and `arguments`)"
        )));
    }
    let arguments = match arguments {
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(inner @ Value::Object(_)) => inner,
            _ => {
                return Err(SyscallError::Arguments {
                    name,
                    reason: "`arguments` must be a JSON object".into(),
                });
            }
        },
        other => other,
    };
    Ok((name, arguments))
}

/// How a call appears in the assistant's message that the next step's prompt replays.
pub fn call_text(name: &str, arguments: &Value) -> String {
    format!(
        "{TOOL_CALL_OPEN}\n{}\n{TOOL_CALL_CLOSE}",
        json!({"name": name, "arguments": arguments})
    )
}

/// A call's result as the model is shown it, cut to `max_chars` characters (a marker says
/// so) to keep the prompt bounded.
///
/// - [`ToolFormat::SystemPrompt`]: the result itself inside `<tool_response>` tags: text as
///   it is, any other JSON value compact, an error as `{"error": …}`. It follows its call in
///   the same turn, so no name is repeated. Shown `{"name": "add", "content": 1364}` instead,
///   SmolLM2-135M answered from it far less often: it described the JSON or copied the block
///   (`tools_bench`, see the README).
/// - [`ToolFormat::Template`]: the content of the `tool` message, `{"name": …, "content": …}`
///   (or `"error"`) as Hermes-style templates expect; the template wraps it.
pub fn result_text(name: &str, result: &Result<Value, SyscallError>, max_chars: usize, format: ToolFormat) -> String {
    match format {
        ToolFormat::SystemPrompt => {
            let body = match result {
                Ok(Value::String(text)) => text.trim_end().to_string(),
                Ok(content) => content.to_string(),
                Err(e) => json!({"error": e.to_string()}).to_string(),
            };
            let total = body.chars().count();
            let body = match total <= max_chars {
                true => body,
                false => {
                    let cut: String = body.chars().take(max_chars).collect();
                    format!("{cut}\n[cut: the result has {total} characters, {max_chars} are shown]")
                }
            };
            format!("{TOOL_RESPONSE_OPEN}\n{body}\n{TOOL_RESPONSE_CLOSE}")
        }
        ToolFormat::Template => {
            let body = match result {
                Ok(content) => {
                    let rendered = content.to_string();
                    if rendered.chars().count() <= max_chars {
                        json!({"name": name, "content": content})
                    } else {
                        let cut: String = rendered.chars().take(max_chars).collect();
                        json!({"name": name, "content": cut, "truncated": true})
                    }
                }
                Err(e) => json!({"name": name, "error": e.to_string()}),
            };
            body.to_string()
        }
    }
}

/// Checks `value` against the subset of JSON Schema that tool schemas here use: `type` (one or
/// a list), `properties`, `required`, `additionalProperties: false`, `items`, `enum`,
/// `minimum`/`maximum`, `minLength`/`maxLength`. Other keywords are not checked.
pub fn check_schema(schema: &Value, value: &Value) -> Result<(), String> {
    check_at(schema, value, "arguments")
}

fn check_at(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return Ok(());
    };
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !allowed.is_empty() && !allowed.iter().any(|t| has_type(value, t)) {
            return Err(format!(
                "{at} must be {}, not {}",
                allowed.join(" or "),
                type_name(value)
            ));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        return Err(format!("{at} must be one of {}", Value::Array(options.clone())));
    }
    if let Some(text) = value.as_str() {
        let chars = text.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            return Err(format!("{at} must be at most {max} characters"));
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && chars < min
        {
            return Err(format!("{at} must be at least {min} characters"));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            return Err(format!("{at} must be at least {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            return Err(format!("{at} must be at most {max}"));
        }
    }
    if let Value::Object(object) = value {
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for key in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(key) {
                    return Err(format!("{at} lacks `{key}`"));
                }
            }
        }
        for (key, item) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(property) => check_at(property, item, &format!("{at}.{key}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at} has an unknown field `{key}`"));
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check_at(item_schema, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        _ => true,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Passes generated text through to a caller, holding back everything from `<tool_call>` on
/// (the caller gets the call as a structured event instead of its raw JSON).
#[derive(Debug, Default)]
pub struct CallFilter {
    /// Text that may be the start of `<tool_call>`, not shown yet.
    pending: String,
    in_call: bool,
}

impl CallFilter {
    /// The part of `text` (with what was held back) that is safe to show now.
    pub fn push(&mut self, text: &str) -> String {
        if self.in_call {
            return String::new();
        }
        self.pending.push_str(text);
        if let Some(start) = self.pending.find(TOOL_CALL_OPEN) {
            self.in_call = true;
            let shown = self.pending[..start].to_string();
            self.pending.clear();
            return shown;
        }
        // Keep the longest tail that could still grow into the tag.
        let keep = (1..TOOL_CALL_OPEN.len())
            .rev()
            .find(|&n| {
                self.pending.len() >= n
                    && self.pending.is_char_boundary(self.pending.len() - n)
                    && TOOL_CALL_OPEN.starts_with(&self.pending[self.pending.len() - n..])
            })
            .unwrap_or(0);
        let shown = self.pending[..self.pending.len() - keep].to_string();
        self.pending.drain(..self.pending.len() - keep);
        shown
    }

    /// What is still held back at the end of a generation that made no call.
    pub fn finish(&mut self) -> String {
        if self.in_call {
            String::new()
        } else {
            std::mem::take(&mut self.pending)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_reply_at_its_call() {
        let reply = "Let me look.\n<tool_call>\n{\"name\": \"fs_read\", \"arguments\": {\"path\": \"a\"}}\n";
        let (before, body) = split_call(reply).unwrap();
        assert_eq!(before, "Let me look.\n");
        assert_eq!(parse_call(body).unwrap(), ("fs_read".to_string(), json!({"path": "a"})));
        let closed = "<tool_call>{\"name\": \"x\"}</tool_call> trailing";
        assert_eq!(split_call(closed).unwrap().1, "{\"name\": \"x\"}");
        assert!(split_call("no call here").is_none());
    }

    #[test]
    fn parses_common_variants_and_rejects_the_rest() {
        let fenced = "```json\n{\"name\": \"sleep\", \"parameters\": {\"ms\": 5}}\n```";
        assert_eq!(parse_call(fenced).unwrap(), ("sleep".into(), json!({"ms": 5})));
        let stringly = r#"{"name": "sleep", "arguments": "{\"ms\": 5}"}"#;
        assert_eq!(parse_call(stringly).unwrap(), ("sleep".into(), json!({"ms": 5})));
        for bad in [
            "",
            "{",
            "[1]",
            "{\"arguments\": {}}",
            "{\"name\": 3}",
            "{\"name\": \"  \"}",
            "{\"name\": \"a\", \"arguments\": {}, \"parameters\": {}}",
            "{\"name\": \"a\", \"extra\": 1}",
        ] {
            assert!(
                matches!(parse_call(bad), Err(SyscallError::Malformed(_))),
                "{bad:?} parsed"
            );
        }
        let not_object = r#"{"name": "sleep", "arguments": "soon"}"#;
        assert!(matches!(parse_call(not_object), Err(SyscallError::Arguments { .. })));
    }

    #[test]
    fn results_are_bounded() {
        let long = Ok(json!("x".repeat(100)));
        let text = result_text("fs_read", &long, 10, ToolFormat::SystemPrompt);
        assert_eq!(
            text,
            "<tool_response>\nxxxxxxxxxx\n[cut: the result has 100 characters, 10 are shown]\n</tool_response>"
        );
        let bare = result_text("fs_read", &long, 10, ToolFormat::Template);
        let bare: Value = serde_json::from_str(&bare).unwrap();
        assert_eq!(
            bare,
            json!({"name": "fs_read", "content": "\"xxxxxxxxx", "truncated": true})
        );
    }

    #[test]
    fn results_in_the_turn_are_the_result_itself() {
        let show = |result: Result<Value, SyscallError>| result_text("t", &result, 100, ToolFormat::SystemPrompt);
        assert_eq!(
            show(Ok(json!("total: 5\n"))),
            "<tool_response>\ntotal: 5\n</tool_response>"
        );
        assert_eq!(show(Ok(json!(1364))), "<tool_response>\n1364\n</tool_response>");
        assert_eq!(
            show(Ok(json!({"path": "a", "bytes": 3}))),
            "<tool_response>\n{\"path\":\"a\",\"bytes\":3}\n</tool_response>"
        );
        assert_eq!(
            show(Err(SyscallError::NotFound("a".into()))),
            "<tool_response>\n{\"error\":\"not found: a\"}\n</tool_response>"
        );
        // A template with a tools branch wraps the result itself, named.
        let named = result_text(
            "fs_read",
            &Err(SyscallError::NotFound("a".into())),
            10,
            ToolFormat::Template,
        );
        let named: Value = serde_json::from_str(&named).unwrap();
        assert_eq!(named, json!({"name": "fs_read", "error": "not found: a"}));
    }

    #[test]
    fn file_paths_offer_what_exists() {
        let tools: Vec<ToolDescription> = ["fs_read", "fs_list", "fs_write"]
            .iter()
            .map(|name| ToolDescription {
                name: name.to_string(),
                description: String::new(),
                parameters: crate::syscall::schema(name).unwrap(),
            })
            .collect();
        let paths = ExistingPaths {
            files: vec![
                "a.txt".into(),
                "d/b.md".into(),
                "x".repeat(crate::syscall::MAX_NAME_CHARS + 1),
            ],
            dirs: vec![".".into(), "d".into()],
        };
        let narrowed = narrow_paths(&tools, &paths);
        assert_eq!(
            narrowed[0].parameters["properties"]["path"]["enum"],
            json!(["a.txt", "d/b.md"])
        );
        assert_eq!(narrowed[1].parameters["properties"]["path"]["enum"], json!([".", "d"]));
        // fs_write names new files.
        assert_eq!(narrowed[2], tools[2]);
        // Nothing a call could name: the path stays free.
        let long_only = ExistingPaths {
            files: vec!["x".repeat(crate::syscall::MAX_NAME_CHARS + 1)],
            dirs: Vec::new(),
        };
        assert_eq!(narrow_paths(&tools, &long_only), tools);
    }

    #[test]
    fn checks_the_schema_subset() {
        let schema = crate::syscall::schema("exec").unwrap();
        assert!(check_schema(&schema, &json!({"program": "ls", "args": ["-l"]})).is_ok());
        let e = check_schema(&schema, &json!({"program": "ls", "args": [1]})).unwrap_err();
        assert!(e.contains("arguments.args[0] must be string"), "{e}");
        let e = check_schema(&schema, &json!({"args": []})).unwrap_err();
        assert!(e.contains("lacks `program`"), "{e}");
        let e = check_schema(&schema, &json!({"program": "ls", "shell": true})).unwrap_err();
        assert!(e.contains("unknown field `shell`"), "{e}");
        let e = check_schema(&schema, &json!({"program": "ls", "timeout_ms": 0})).unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = check_schema(&json!({"enum": ["a", "b"]}), &json!("c")).unwrap_err();
        assert!(e.contains("one of"), "{e}");
    }

    #[test]
    fn the_filter_holds_back_the_call() {
        let mut filter = CallFilter::default();
        let mut shown = String::new();
        for piece in ["The answer", " <tool", "_ca", "ll>{\"name\"", ": \"x\"}"] {
            shown.push_str(&filter.push(piece));
        }
        shown.push_str(&filter.finish());
        assert_eq!(shown, "The answer ");
        let mut plain = CallFilter::default();
        let mut shown = plain.push("a <b> <to");
        shown.push_str(&plain.push("day"));
        shown.push_str(&plain.finish());
        assert_eq!(shown, "a <b> <today");
    }

    #[test]
    fn call_grammars_generate_only_declared_properties() {
        let open = ToolDescription {
            name: "read_text_file".into(),
            description: String::new(),
            parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
        };
        let declared = ToolDescription {
            name: "loose".into(),
            description: String::new(),
            parameters: json!({"type": "object", "properties": {}, "additionalProperties": true}),
        };
        let Constraint {
            grammar: Grammar::JsonSchema(schema),
            ..
        } = call_grammar(&[open, declared], false)
        else {
            panic!("a lazy call grammar is a JSON Schema");
        };
        let arguments = |i: usize| schema["anyOf"][i]["properties"]["arguments"].clone();
        assert_eq!(arguments(0)["additionalProperties"], json!(false));
        // A schema that says what it allows is kept as it is.
        assert_eq!(arguments(1)["additionalProperties"], json!(true));
    }
}
