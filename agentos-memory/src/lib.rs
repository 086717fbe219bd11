//! agentos-memory: semantic memory (cognitive pages, L1/L2/L3 tiers). Built by the S-MMU issue;
//! it holds no code yet.
