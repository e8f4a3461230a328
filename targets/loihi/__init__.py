"""loihi target (in progress)."""
