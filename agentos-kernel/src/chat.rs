//! Chat rendering with the model's own Jinja template (`tokenizer.chat_template`).
//!
//! A template may have a tools branch: given a `tools` list (OpenAI's function objects,
//! `{"type": "function", "function": {"name", "description", "parameters"}}`), it writes the
//! tool list and calling instructions the model was trained on, and renders `tool` messages
//! (results) its own way. [`ChatTemplate::has_tools_branch`] says whether a template has one
//! whose calls are written inside `<tool_call>` tags (Hermes, Qwen2.5, SmolLM3 style), the call
//! format the runtime parses and constrains.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{KernelError, Result};

/// ChatML, used only when a model ships no template of its own.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    tools_branch: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token`/`eos_token` are exposed to the template as HF does.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        // HF templates call Python string methods (`.strip()`, `.startswith()`, ...).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| KernelError::ChatTemplate(format!("cannot parse the template: {e}")))?;
        let reads_tools = env
            .get_template("chat")
            .map_err(|e| KernelError::ChatTemplate(e.to_string()))?
            .undeclared_variables(false)
            .contains("tools");
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            tools_branch: reads_tools && source.contains("<tool_call>"),
        })
    }

    /// Whether the template renders a `tools` list itself and has the model write calls inside
    /// `<tool_call>` tags. Only then is the model's own tool format used: a template whose
    /// calls look different (Llama 3.1's bare JSON, Mistral's `[TOOL_CALLS]`) would teach the
    /// model calls that the runtime's parser and call grammar do not read.
    pub fn has_tools_branch(&self) -> bool {
        self.tools_branch
    }

    /// Renders messages; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, &[], add_generation_prompt)
    }

    /// Renders messages with the last one left open, for the model to continue its text: the
    /// conversation is rendered without a generation prompt and cut right after the last
    /// message's content (as Hugging Face's `continue_final_message` does), so whatever the
    /// template writes to close that message is not there.
    pub fn render_continuing(&self, messages: &[ChatMessage]) -> Result<String> {
        let Some(last) = messages.last() else {
            return self.render(messages, false);
        };
        let rendered = self.render(messages, false)?;
        let content = last.content.trim();
        if content.is_empty() {
            return Err(KernelError::ChatTemplate(
                "cannot continue a message with no text".into(),
            ));
        }
        let at = rendered.rfind(content).ok_or_else(|| {
            KernelError::ChatTemplate(
                "cannot continue the last message: the template does not write its text as given".into(),
            )
        })?;
        // The message's own text from where the template wrote it, trailing whitespace
        // included (a template may trim it).
        Ok(format!("{}{}", &rendered[..at], last.content.trim_start()))
    }

    /// Renders messages with `tools` (function objects) given to the template's tools branch;
    /// no tools renders as [`ChatTemplate::render`] does (`tools` is then undefined, as in HF).
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| KernelError::ChatTemplate(e.to_string()))?;
        let tools = (!tools.is_empty()).then_some(tools);
        template
            .render(context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| KernelError::ChatTemplate(format!("cannot render: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "<|im_end|>").unwrap();
        let out = t
            .render(&[ChatMessage::system("Be brief."), ChatMessage::user("Hi")], true)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn continuing_leaves_the_last_message_open() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "<|im_end|>").unwrap();
        let messages = [
            ChatMessage::user("Hi"),
            ChatMessage::assistant("<tool_call>{}</tool_call>\n<tool_response>\n7\n</tool_response>\n"),
        ];
        assert_eq!(
            t.render_continuing(&messages).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<tool_call>{}</tool_call>\n<tool_response>\n7\n</tool_response>\n"
        );
        // A template that trims messages still gets the text as given, trailing newline too.
        let trimming = ChatTemplate::new(
            "{% for m in messages %}<{{ m.role }}>{{ m.content.strip() }}</{{ m.role }}>{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            trimming
                .render_continuing(&[ChatMessage::assistant("  go on\n")])
                .unwrap(),
            "<assistant>go on\n"
        );
        // One that rewrites the text cannot be continued: an error, not a wrong prompt.
        let upper = ChatTemplate::new("{% for m in messages %}{{ m.content.upper() }}{% endfor %}", "", "").unwrap();
        assert!(upper.render_continuing(&[ChatMessage::assistant("abc")]).is_err());
        assert!(t.render_continuing(&[ChatMessage::assistant(" ")]).is_err());
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0].content.strip() }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[ChatMessage::user("  x ")], false).unwrap(), "x");
        let err = t.render(&[ChatMessage::system("s")], false).unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    /// The tools branch of Qwen2.5's template (abridged to the parts that matter here).
    const HERMES_TOOLS_TEMPLATE: &str = r##"{%- if tools %}{{- '<|im_start|>system\n' }}{%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}{{- "# Tools\n\n<tools>" }}{%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}{{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags.<|im_end|>\n" }}{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}{%- endif %}{%- for message in messages %}{%- if message.role == "user" or (message.role == "assistant") %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- elif message.role == "tool" %}{{- '<|im_start|>user\n<tool_response>\n' + message.content + '\n</tool_response><|im_end|>\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"##;

    #[test]
    fn a_tools_branch_is_detected_and_given_the_tools() {
        let plain = ChatTemplate::new(CHATML_TEMPLATE, "", "<|im_end|>").unwrap();
        assert!(!plain.has_tools_branch());
        let hermes = ChatTemplate::new(HERMES_TOOLS_TEMPLATE, "", "<|im_end|>").unwrap();
        assert!(hermes.has_tools_branch());
        // Reads `tools` but writes calls some other way: not a branch the runtime can use.
        let other =
            ChatTemplate::new("{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}{% endif %}", "", "").unwrap();
        assert!(!other.has_tools_branch());

        let tool = serde_json::json!({"type": "function", "function": {"name": "add", "description": "Adds.", "parameters": {"type": "object"}}});
        let messages = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("1+2?"),
            ChatMessage::assistant("<tool_call>{\"name\":\"add\",\"arguments\":{}}</tool_call>"),
            ChatMessage::new("tool", "3"),
        ];
        let out = hermes.render_with_tools(&messages, &[tool], true).unwrap();
        assert!(
            out.starts_with("<|im_start|>system\nBe brief.\n\n# Tools\n\n<tools>\n{\""),
            "{out}"
        );
        assert!(out.contains("\"type\":\"function\""), "{out}");
        assert!(out.contains("\"name\":\"add\""), "{out}");
        assert!(
            out.contains("<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n"),
            "{out}"
        );
        assert!(out.ends_with("<|im_start|>assistant\n"), "{out}");
        // Without tools the same template renders its plain branch.
        let out = hermes.render(&messages[..2], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn bad_template_is_an_error() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
