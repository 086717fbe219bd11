//! The `agentos` command, built inside this crate so that its integration tests can run it
//! (Cargo gives a test the path of its own package's binaries only). The same code as the
//! installed command: `agentos_cli::main`.

fn main() -> std::process::ExitCode {
    agentos_cli::main()
}
