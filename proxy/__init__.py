"""poolproxy: a transaction-mode connection pooler for PostgreSQL and MySQL/MariaDB."""

import os as _os

from . import _native

__version__ = "0.1.0"

#: Whether this process runs the mypyc-compiled hot path (see proxy/_native.py). Chosen here,
#: before any submodule is imported: POOLPROXY_PURE=1 forces the pure-Python modules.
COMPILED = _native.select(_os.path.dirname(_os.path.abspath(__file__)))
