"""Test harness: throwaway PostgreSQL / MariaDB servers and the proxy as a subprocess.

Import from here (``from tests.harness import PgServer, make_config, pg_listener``); the
fixtures that use these live in ``tests/conftest.py``. Helpers for the tests themselves are
imported from their submodules: ``util`` (waiting, the admin HTTP API, background loops),
``pgclient`` and ``myclient`` (client-side query helpers), ``pgraw`` (a raw PostgreSQL socket
client); ``procs`` holds the process and polling helpers of the harness classes.
"""

from .mariadb import MariaDbServer
from .pgserver import PgServer
from .ports import free_port
from .proxyproc import ProxyProcess, make_config, mysql_listener, pg_listener, run_cli

__all__ = [
    "MariaDbServer",
    "PgServer",
    "ProxyProcess",
    "free_port",
    "make_config",
    "mysql_listener",
    "pg_listener",
    "run_cli",
]
