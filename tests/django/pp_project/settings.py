"""Settings of the Django project that tests/django drives through poolproxy.

Everything that differs between runs comes from the environment, so that the pytest process
(which owns the proxy and the database servers) can run ``manage.py`` / ``scenarios.py`` in a
subprocess and no Django global state leaks into the rest of the suite:

- ``PP_ENGINE``: ``postgresql`` (psycopg 3) or ``mysql`` (mysqlclient)
- ``PP_HOST`` / ``PP_PORT`` / ``PP_NAME``: the poolproxy listener and the database name
- ``PP_TEST_NAME``: the database Django's test runner creates (and drops) through the proxy
- ``PP_CONN_MAX_AGE`` (seconds, default 0), ``PP_HEALTH_CHECKS`` (0/1, default 0)
- ``PP_TIME_ZONE`` (default ``Asia/Tokyo``; ``USE_TZ`` is always on)

Aliases (all on the same listener and database; tests pick the ones they need):

- ``default``: the settings docs/django.md recommends.
- ``other``: a second connection with *different session state*: PostgreSQL connection
  ``TIME_ZONE`` America/New_York and ``isolation_level`` SERIALIZABLE; MySQL
  ``isolation_level`` serializable and an ``init_command`` setting ``time_zone`` and
  ``sql_auto_is_null`` (which makes Django send its two-statement init query). With
  ``pool_size: 1`` both aliases share one server connection, and neither may see the other's state.
- ``ssc`` (PostgreSQL): ``DISABLE_SERVER_SIDE_CURSORS`` off, so ``iterator()`` declares cursors.
- ``ssb`` (PostgreSQL): ``server_side_binding`` (psycopg 3 sends parameters separately,
  through unnamed prepared statements).
- ``prep`` (PostgreSQL): ``server_side_binding`` and psycopg 3 ``prepare_threshold`` 1 (named
  prepared statements from the second run of a query on).
- ``opt_tz`` / ``opt_stmt`` (PostgreSQL): libpq ``options`` setting TimeZone (reported by the
  server, so poolproxy keeps it per client) / statement_timeout (not reported: refused).
- ``opt_lock`` (MySQL): an ``init_command`` setting ``innodb_lock_wait_timeout``.
- ``prep_client`` (PostgreSQL): ``prepare_threshold`` 1 alone; Django's default client-side
  binding cursor never prepares, so this changes nothing.
"""

from __future__ import annotations

import os
from typing import Any

SECRET_KEY = "poolproxy-django-e2e-not-secret"
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "pp_app",
]
USE_TZ = True
TIME_ZONE = os.environ.get("PP_TIME_ZONE", "Asia/Tokyo")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING_CONFIG = None

ENGINE = os.environ.get("PP_ENGINE", "postgresql")
if ENGINE not in ("postgresql", "mysql"):
    raise ValueError(f"PP_ENGINE must be postgresql or mysql, not {ENGINE!r}")


def _database(**overrides: Any) -> dict[str, Any]:
    options: dict[str, Any]
    if ENGINE == "postgresql":
        # prepare_threshold is Django's own default (None with psycopg 3); the prep alias sets it.
        options = {"connect_timeout": 10}
    else:
        options = {"charset": "utf8mb4", "isolation_level": "read committed",
                   "connect_timeout": 10}
    options.update(overrides.pop("OPTIONS", {}))
    db: dict[str, Any] = {
        "ENGINE": f"django.db.backends.{ENGINE}",
        "HOST": os.environ.get("PP_HOST", "127.0.0.1"),
        "PORT": os.environ.get("PP_PORT", "6432" if ENGINE == "postgresql" else "6033"),
        "NAME": os.environ.get("PP_NAME", "app"),
        "USER": os.environ.get("PP_USER", "app"),
        "PASSWORD": os.environ.get("PP_PASSWORD", "app-secret"),
        "CONN_MAX_AGE": int(os.environ.get("PP_CONN_MAX_AGE", "0")),
        "CONN_HEALTH_CHECKS": os.environ.get("PP_HEALTH_CHECKS", "0") == "1",
        # PostgreSQL: iterator() outside atomic() would DECLARE ... WITH HOLD, which pins.
        "DISABLE_SERVER_SIDE_CURSORS": True,
        "OPTIONS": options,
        "TEST": {"NAME": os.environ.get("PP_TEST_NAME", "test_pp_django")},
    }
    db.update(overrides)
    return db


def _mirror(**overrides: Any) -> dict[str, Any]:
    db = _database(**overrides)
    db["TEST"] = {"MIRROR": "default"}
    return db


if ENGINE == "postgresql":
    from psycopg import IsolationLevel

    DATABASES = {
        "default": _database(),
        "other": _mirror(TIME_ZONE="America/New_York",
                         OPTIONS={"isolation_level": IsolationLevel.SERIALIZABLE}),
        "ssc": _mirror(DISABLE_SERVER_SIDE_CURSORS=False),
        "ssb": _mirror(OPTIONS={"server_side_binding": True}),
        "prep": _mirror(OPTIONS={"server_side_binding": True, "prepare_threshold": 1}),
        "prep_client": _mirror(OPTIONS={"prepare_threshold": 1}),
        # libpq startup options: reported parameters are accepted, others refused.
        "opt_tz": _mirror(OPTIONS={"options": "-c TimeZone=UTC"}),
        "opt_stmt": _mirror(OPTIONS={"options": "-c statement_timeout=5000"}),
    }
else:
    DATABASES = {
        "default": _database(),
        "other": _mirror(OPTIONS={
            "isolation_level": "serializable",
            "init_command": "SET time_zone = '+09:00', sql_auto_is_null = 1",
        }),
        "opt_lock": _mirror(OPTIONS={
            "init_command": "SET SESSION innodb_lock_wait_timeout = 7",
        }),
    }
