//! agentos-sync: coherence between agents (sync pulses, blackboard, drift). It holds no code yet.
