"""MySQL/MariaDB client/server protocol: codec, client sessions and server connections."""
