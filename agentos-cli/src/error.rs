//! One error type for the command: a message that says what went wrong and what to do.

use std::fmt;

pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// What the user is told, on one line.
#[derive(Debug)]
pub struct CliError(String);

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        CliError(message.into())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl From<agentos_runtime::RuntimeError> for CliError {
    fn from(e: agentos_runtime::RuntimeError) -> Self {
        CliError(e.to_string())
    }
}

impl From<agentos_kernel::KernelError> for CliError {
    fn from(e: agentos_kernel::KernelError) -> Self {
        CliError(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError(e.to_string())
    }
}
