//! The `agentos` command; everything is in the library (see `agentos_cli`).

fn main() -> std::process::ExitCode {
    agentos_cli::main()
}
