"""The protocol-agnostic runtime: client/server sessions and what links them, the per-server
request queue, the listener runtime, the outbox, and the at-most-once analysis."""
