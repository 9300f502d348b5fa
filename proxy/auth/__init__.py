"""Authentication primitives (pure functions, no I/O) for both protocols."""
