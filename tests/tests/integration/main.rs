//! agentos integration tests: one binary, one module per area (`<area>_<topic>.rs`).
//!
//! Tests that need the default model fetch it on first use (into `AGENTOS_HOME`) and share
//! one loaded engine per weight dtype.

#[macro_use]
mod support;

mod cli_repl;
mod cli_serve;
mod kernel_actor;
mod kernel_batcher;
mod kernel_engine;
mod kernel_files;
mod kernel_fuzz;
mod kernel_grammar;
mod kernel_parity;
mod kernel_wgpu;
mod memory_model;
mod memory_store;
mod memory_tiers;
mod runtime_agent_calls;
mod runtime_agents;
mod runtime_crash;
mod runtime_load;
mod runtime_macro;
mod runtime_mcp;
mod runtime_model;
mod runtime_scheduler;
mod runtime_supervisor;
mod runtime_syscalls;
mod runtime_tools;
mod security_attacks;
mod security_model;
mod sync_board;
mod sync_model;
