"""Sans-IO MySQL/MariaDB client/server protocol 41: packet framing, handshake, OK/ERR/EOF, and
response-end tracking (ResponseTracker) for transaction pooling.

Bytes in, values out and back; no I/O here (no asyncio/socket/ssl imports, a test enforces it).

Conventions
-----------
* Every parser raises :class:`ProtocolError` (a ``ValueError``) on truncated or malformed input,
  never ``IndexError`` / ``struct.error``.
* Capabilities: the wire carries the standard 32 capability bits and, for MariaDB, 32 more
  "extended" bits in bytes that MySQL reserves (present when the server clears bit 0,
  ``CLIENT_MYSQL`` == ``CLIENT_LONG_PASSWORD``).  :class:`Handshake` and :class:`HandshakeResponse`
  keep both as on the wire (``capabilities``: lower 32 bits, ``mariadb_ext_caps``: the extended
  32 bits, unshifted) and expose ``all_capabilities`` = ``capabilities | mariadb_ext_caps << 32``.
  The ``MARIADB_CLIENT_*`` constants are 64-bit values (``1 << 32`` ...) as in MariaDB's headers,
  so test them against ``all_capabilities``.  :class:`ResponseTracker` takes the 64-bit value.
* Identifiers and strings (user, database, plugin, variable names) are decoded as UTF-8 with
  ``surrogateescape`` so that they round-trip losslessly through the ``build_*`` functions.
"""


from __future__ import annotations

from .messages import *  # noqa: F403
from .response import *  # noqa: F403
from .wire import *  # noqa: F403
