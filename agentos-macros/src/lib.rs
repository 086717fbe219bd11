//! agentos-macros: the `#[agent]` attribute macro. Built by the runtime issue; it holds no code yet.
