"""Jobs: versioned specs, and running them as state machines."""
