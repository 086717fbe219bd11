//! User tools: functions an application gives its agents, called by name from the model.
//!
//! Register one with [`AgentOsBuilder::tool`](crate::AgentOsBuilder::tool) and name it in an
//! agent's `#[agent(tools = [...])]`. Its arguments are checked against its schema before it
//! runs (see [`check_schema`](crate::syscall::wire::check_schema)); what it returns is shown to
//! the model as the call's result, and an `Err` as the call's error.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

/// What a tool's call returns.
pub type ToolFuture = Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;

/// A function the model can call.
pub trait Tool: Send + Sync + 'static {
    /// The name the model calls it by (not one of the system calls' names).
    fn name(&self) -> &str;
    /// One or two sentences for the prompt: what it does and returns.
    fn description(&self) -> &str;
    /// The JSON Schema of its arguments (an object schema).
    fn parameters(&self) -> Value;
    /// Runs it with arguments that passed the schema check.
    fn call(&self, arguments: Value) -> ToolFuture;
}

/// A tool made of a name, a description, a schema and an async function.
pub struct FnTool<F> {
    name: String,
    description: String,
    parameters: Value,
    function: F,
}

impl<F, Fut> FnTool<F>
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, String>> + Send + 'static,
{
    /// ```
    /// use agentos_runtime::syscall::tool::FnTool;
    /// use serde_json::json;
    ///
    /// let add = FnTool::new(
    ///     "add",
    ///     "Adds two integers and returns the sum.",
    ///     json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    ///            "required": ["a", "b"], "additionalProperties": false}),
    ///     |args| async move {
    ///         let (a, b) = (args["a"].as_i64().unwrap_or(0), args["b"].as_i64().unwrap_or(0));
    ///         a.checked_add(b).map(|sum| json!(sum)).ok_or_else(|| "the sum overflows".to_string())
    ///     },
    /// );
    /// ```
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value, function: F) -> Self {
        FnTool {
            name: name.into(),
            description: description.into(),
            parameters,
            function,
        }
    }
}

impl<F, Fut> Tool for FnTool<F>
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, String>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn parameters(&self) -> Value {
        self.parameters.clone()
    }
    fn call(&self, arguments: Value) -> ToolFuture {
        Box::pin((self.function)(arguments))
    }
}

/// A type a `#[tool]` fn can take as an argument: its JSON Schema, and whether the call must
/// give it. Implemented for strings, integers (unsigned ones have `minimum: 0`), floats,
/// `bool`, `Vec<T>`, `Option<T>` (not required) and `serde_json::Value` (anything);
/// implement it for your own `Deserialize` types.
pub trait ToolArgument {
    fn schema() -> Value;
    const REQUIRED: bool = true;
}

impl ToolArgument for String {
    fn schema() -> Value {
        serde_json::json!({"type": "string"})
    }
}

impl ToolArgument for bool {
    fn schema() -> Value {
        serde_json::json!({"type": "boolean"})
    }
}

impl ToolArgument for Value {
    fn schema() -> Value {
        serde_json::json!({})
    }
}

macro_rules! integer_argument {
    (signed: $($t:ty),*; unsigned: $($u:ty),*) => {
        $(impl ToolArgument for $t {
            fn schema() -> Value {
                serde_json::json!({"type": "integer"})
            }
        })*
        $(impl ToolArgument for $u {
            fn schema() -> Value {
                serde_json::json!({"type": "integer", "minimum": 0})
            }
        })*
    };
}
integer_argument!(signed: i8, i16, i32, i64, isize; unsigned: u8, u16, u32, u64, usize);

impl ToolArgument for f32 {
    fn schema() -> Value {
        serde_json::json!({"type": "number"})
    }
}

impl ToolArgument for f64 {
    fn schema() -> Value {
        serde_json::json!({"type": "number"})
    }
}

impl<T: ToolArgument> ToolArgument for Vec<T> {
    fn schema() -> Value {
        serde_json::json!({"type": "array", "items": T::schema()})
    }
}

impl<T: ToolArgument> ToolArgument for Option<T> {
    fn schema() -> Value {
        T::schema()
    }
    const REQUIRED: bool = false;
}

/// The tools an AgentOS offers its agents (part of [`RuntimeConfig`](crate::RuntimeConfig)).
#[derive(Clone, Default)]
pub struct ToolSet {
    tools: Vec<Arc<dyn Tool>>,
}

impl ToolSet {
    pub fn add(&mut self, tool: Arc<dyn Tool>) {
        self.tools.push(tool);
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// The tools by name; an error names a tool whose name is empty, taken by a system call,
    /// or given twice.
    pub(crate) fn by_name(&self) -> Result<HashMap<String, Arc<dyn Tool>>, String> {
        let mut out = HashMap::new();
        for tool in &self.tools {
            let name = tool.name();
            if name.trim().is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("a tool's name must be one word, not {name:?}"));
            }
            if crate::syscall::SYSCALLS.contains(&name) {
                return Err(format!("`{name}` is a system call's name; give the tool another"));
            }
            if out.insert(name.to_string(), tool.clone()).is_some() {
                return Err(format!("two tools are named `{name}`"));
            }
        }
        Ok(out)
    }
}

impl std::fmt::Debug for ToolSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.iter().map(|t| t.name())).finish()
    }
}
