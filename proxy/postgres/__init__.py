"""PostgreSQL v3 wire protocol: codec, client sessions and server connections."""
