//! agentos-runtime: the system users add (supervision tree, scheduler, agents). Built by the
//! runtime and scheduler issues; it holds no code yet.
