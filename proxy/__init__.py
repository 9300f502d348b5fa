"""poolproxy: a transaction-mode connection pooler for PostgreSQL and MySQL/MariaDB."""

__version__ = "0.1.0"
