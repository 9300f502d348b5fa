"""Settings of the poolproxy example app: the database is reached through poolproxy.

DJANGO_DB=postgres (default) uses poolproxy's PostgreSQL listener (6432, psycopg 3);
DJANGO_DB=mysql its MySQL listener (6033, mysqlclient). The settings below are the ones the
docs/django.md recommends for transaction pooling.
"""

import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",")

INSTALLED_APPS = ["django.contrib.contenttypes", "visits"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "exampleproject.urls"
WSGI_APPLICATION = "exampleproject.wsgi.application"
USE_TZ = True
TIME_ZONE = os.environ.get("DJANGO_TIME_ZONE", "UTC")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_backend = os.environ.get("DJANGO_DB", "postgres")
_common = {
    "HOST": os.environ.get("DB_HOST", "poolproxy"),
    "NAME": os.environ.get("DB_NAME", "app"),
    "USER": os.environ.get("DB_USER", "app"),
    "PASSWORD": os.environ.get("DB_PASSWORD", ""),
    # Persistent connections to poolproxy are cheap: a client holds a server connection only
    # inside a transaction. Health checks notice a connection poolproxy closed (restart, drain).
    "CONN_MAX_AGE": int(os.environ.get("DB_CONN_MAX_AGE", "600")),
    "CONN_HEALTH_CHECKS": True,
}
if _backend == "mysql":
    DATABASES = {"default": {
        **_common,
        "ENGINE": "django.db.backends.mysql",
        "PORT": os.environ.get("DB_PORT", "6033"),
        "OPTIONS": {"charset": "utf8mb4", "isolation_level": "read committed"},
    }}
elif _backend == "postgres":
    DATABASES = {"default": {
        **_common,
        "ENGINE": "django.db.backends.postgresql",
        "PORT": os.environ.get("DB_PORT", "6432"),
        # Server-side cursors outlive a transaction: with transaction pooling the next query
        # may land on another server connection.
        "DISABLE_SERVER_SIDE_CURSORS": True,
        # psycopg 3 named prepared statements would pin the client to one server.
        "OPTIONS": {"prepare_threshold": None},
    }}
else:
    raise RuntimeError(f"DJANGO_DB must be postgres or mysql, not {_backend!r}")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}
