#!/usr/bin/env bash
# The test command: bash scripts/test.sh [pytest args]
#
# 1. Installs what the suite needs and is missing (Debian/Ubuntu, via apt-get): PostgreSQL and
#    MariaDB server binaries (the harness starts its own throwaway instances on free ports; the
#    system services are neither started nor used), what building mysqlclient needs, and
#    Chromium with its chromedriver (the status page's browser test).
# 2. Installs the package with its test extras (pip install -e '.[test]') when something is
#    missing or too old. Where the system Python is "externally managed" (PEP 668, Debian's
#    /usr/bin/python3) this happens in ./.venv instead.
# 3. Compiles the hot path in place with mypyc (`setup.py build_ext --inplace`: a few seconds
#    when nothing changed; where it cannot, setup.py warns and the pure-Python modules are
#    tested). Under CI=true a build that did not happen fails the run.
# 4. Runs `ruff check proxy tests` and `mypy proxy` (failing if they fail), then pytest, and
#    exits with pytest's code. Default pytest args: tests/ without tests/bench (benchmarks are
#    scripts, not tests); with the default args and the compiled modules in use, the unit tests
#    run a second time with POOLPROXY_PURE=1 (the pure modules), and the first failure's code
#    is the exit code.
#
# Environment: PYTHON (default python3), POOLPROXY_SKIP_LINT=1 skips ruff/mypy (local use only),
# POOLPROXY_NO_COMPILE=1 skips the compilation (the pure modules are tested, once).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"

log() { printf '==> %s\n' "$*" >&2; }

# ---------------------------------------------------------------- system packages
SUDO=()
CAN_INSTALL=1
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        CAN_INSTALL=""
    fi
fi
command -v apt-get >/dev/null 2>&1 || CAN_INSTALL=""

APT_UPDATED=""
apt_install() {
    if [ -z "$CAN_INSTALL" ]; then
        log "missing system packages: $* (install them: this needs apt-get and root or sudo)"
        exit 2
    fi
    log "installing system packages: $*"
    # Keep package scripts from starting the system PostgreSQL/MariaDB services.
    local created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    local rc=0
    {
        if [ -z "$APT_UPDATED" ]; then
            "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
            APT_UPDATED=1
        fi
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            --no-install-recommends "$@" >/dev/null
    } || rc=$?
    [ -z "$created_policy" ] || "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    return "$rc"
}

py() { "$PYTHON" "$@"; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    apt_install python3 python3-venv
fi

# PEP 668: never pip-install into an externally managed system Python; use ./.venv there.
externally_managed() {
    py -c 'import os, sys, sysconfig
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(
    os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'
}
if externally_managed || ! py -m pip --version >/dev/null 2>&1; then
    if [ ! -x .venv/bin/python ]; then
        py -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_install python3-venv
        log "creating .venv"
        py -m venv .venv
    fi
    PYTHON="$PWD/.venv/bin/python"
fi

have_pg_server() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null 2>&1
}
have_mariadbd() {
    command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]
}
have_mysqlclient_build_deps() {
    command -v pkg-config >/dev/null 2>&1 \
        && { pkg-config --exists libmariadb || pkg-config --exists mysqlclient; } \
        && { command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; }
}
have_python_headers() {
    py -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
}

packages=()
have_pg_server || packages+=(postgresql)
have_mariadbd || packages+=(mariadb-server)
# The status page is tested in a real browser (tests/integration/test_status_page.py).
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
# sysbench drives MySQL prepared statements (COM_STMT_*) at its defaults in an integration test.
command -v sysbench >/dev/null 2>&1 || packages+=(sysbench)
command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)
if ! py -c 'import MySQLdb, mariadb' >/dev/null 2>&1; then
    # mysqlclient and MariaDB Connector/Python have no Linux wheels: pip builds them from
    # source, against libmariadb (mariadb_config).
    { have_mysqlclient_build_deps && command -v mariadb_config >/dev/null 2>&1; } \
        || packages+=(libmariadb-dev pkg-config gcc)
    have_python_headers || packages+=(python3-dev)
fi
if [ "${#packages[@]}" -gt 0 ]; then
    apt_install "${packages[@]}"
fi

# ---------------------------------------------------------------- Python packages
# Exit 0 when poolproxy and every requirement of it and of its [test] extra is installed at a
# version that satisfies pyproject.toml.
python_deps_ok() {
    py - <<'PY' >/dev/null 2>&1
import importlib.metadata as md
import sys
import tomllib

try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

with open("pyproject.toml", "rb") as fh:
    project = tomllib.load(fh)["project"]
md.distribution(project["name"])  # PackageNotFoundError -> exit 1
todo = [Requirement(r) for r in project["dependencies"]]
todo += [Requirement(r) for r in project["optional-dependencies"].get("test", [])]
seen = set()
while todo:
    req = todo.pop()
    key = (req.name.lower(), tuple(sorted(req.extras)))
    if key in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    seen.add(key)
    dist = md.distribution(req.name)
    if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
        sys.exit(1)
    for extra in req.extras:  # e.g. psycopg[binary] -> psycopg-binary
        for sub in dist.requires or []:
            r = Requirement(sub)
            if r.marker and r.marker.evaluate({"extra": extra}):
                r.marker = None
                todo.append(r)
PY
}

if ! python_deps_ok; then
    log "installing Python packages (pip install -e '.[test]')"
    PIP_DISABLE_PIP_VERSION_CHECK=1 py -m pip install -q --root-user-action=ignore -e '.[test]'
fi

# ---------------------------------------------------------------- compiled hot path
if [ -z "${POOLPROXY_NO_COMPILE:-}" ]; then
    log "compiling the hot path (setup.py build_ext --inplace)"
    py setup.py -q build_ext --inplace
fi
compiled="$(py -c 'import proxy; print(int(proxy.COMPILED))')"
if [ "$compiled" != 1 ] && [ -n "${CI:-}" ] && [ -z "${POOLPROXY_NO_COMPILE:-}${POOLPROXY_PURE:-}" ]; then
    log "CI: the compiled modules are not in use (see the warnings above);" \
        "POOLPROXY_NO_COMPILE=1 tests the pure-Python modules only"
    exit 1
fi

# ---------------------------------------------------------------- lint, types, tests
if [ -z "${POOLPROXY_SKIP_LINT:-}" ]; then
    log "ruff check proxy tests"
    py -m ruff check -q proxy tests
    log "mypy proxy"
    py -m mypy proxy
fi

pure_pass=""
if [ "$#" -eq 0 ]; then
    set -- tests --ignore=tests/bench
    [ "$compiled" != 1 ] || pure_pass=1
fi
log "pytest $*"
rc=0
"$PYTHON" -m pytest -q "$@" || rc=$?
if [ -n "$pure_pass" ]; then
    log "POOLPROXY_PURE=1 pytest tests/unit (the unit tests against the pure-Python modules)"
    POOLPROXY_PURE=1 "$PYTHON" -m pytest -q tests/unit || { r=$?; [ "$rc" -ne 0 ] || rc=$r; }
fi
exit "$rc"
