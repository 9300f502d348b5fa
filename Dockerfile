# poolproxy container image.
#
#   docker build -t poolproxy .
#   docker run --rm -e APP_DB_PASSWORD=... -e POSTGRES_HOST=db -p 6432:6432 -p 9127:9127 poolproxy
#   docker run --rm -e APP_DB_PASSWORD=x poolproxy --check      # validate the baked-in config
#
# Configuration: the file named by $POOLPROXY_CONFIG (default /etc/poolproxy/poolproxy.yaml,
# copied from deploy/poolproxy.docker.yaml); mount your own file over it, or elsewhere and point
# POOLPROXY_CONFIG at it. Any ${VAR} / ${VAR:-default} in the file comes from the container's
# environment, so passwords stay in environment variables / secrets, not in the file.

ARG PYTHON_VERSION=3.11

# ---- builder: wheels for poolproxy and its dependencies (these ship binary wheels), installed
#      under /install for the runtime stage to copy. gcc is here only: setup.py compiles
#      poolproxy's hot path with mypyc (a pure wheel, with a warning in the log, if that fails).
FROM python:${PYTHON_VERSION}-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
RUN pip wheel --wheel-dir /wheels . \
 && pip install --no-index --find-links=/wheels --prefix=/install --ignore-installed poolproxy

# ---- runtime: slim Python, the wheels installed, nothing else
FROM python:${PYTHON_VERSION}-slim
ARG POOLPROXY_UID=10001
LABEL org.opencontainers.image.title="poolproxy" \
      org.opencontainers.image.description="Transaction-mode connection pooler for PostgreSQL and MySQL/MariaDB" \
      org.opencontainers.image.licenses="MIT"

RUN groupadd --system --gid "${POOLPROXY_UID}" poolproxy \
 && useradd --system --uid "${POOLPROXY_UID}" --gid poolproxy --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin poolproxy

# Only the installed packages and the `poolproxy` script: no wheels, no build cache, no compiler.
COPY --from=builder /install /usr/local
RUN poolproxy --version \
 && python -c "import proxy; print('hot path:', 'compiled' if proxy.COMPILED else proxy._native.reason)"

COPY deploy/poolproxy.docker.yaml /etc/poolproxy/poolproxy.yaml

ENV POOLPROXY_CONFIG=/etc/poolproxy/poolproxy.yaml \
    POOLPROXY_HEALTHCHECK_URL=http://127.0.0.1:9127/healthz \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Numeric, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER ${POOLPROXY_UID}:${POOLPROXY_UID}

# 6432 PostgreSQL listener, 6033 MySQL listener, 9127 admin HTTP (/metrics /healthz /readyz /pools)
EXPOSE 6432 6033 9127

# SIGTERM = graceful: /readyz turns 503, listeners close, open transactions get up to
# shutdown_timeout to finish. Give `docker stop -t` / compose stop_grace_period more than that.
STOPSIGNAL SIGTERM

# No curl in the image: the standard library does the probe (any non-2xx or error -> unhealthy).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('POOLPROXY_HEALTHCHECK_URL', 'http://127.0.0.1:9127/healthz'), timeout=2)"]

# With no -c, poolproxy reads $POOLPROXY_CONFIG. Extra arguments are passed on (e.g. --check).
ENTRYPOINT ["poolproxy"]
