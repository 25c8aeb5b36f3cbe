"""Health-gated rollouts: the transition table, wave planning, health gates and the engine."""
