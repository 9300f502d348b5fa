"""The README's quick start, run as written, from a fresh copy of the repository.

The commands come from README.md itself, from the fenced block after each marker, never retyped:

- ``<!-- quickstart-sql-postgres -->`` and ``<!-- quickstart-sql-mysql -->``: the SQL between
  ``<<'SQL'`` and ``SQL`` runs, statement by statement in one session, as the superuser of the
  suite's PostgreSQL and MariaDB (fixtures ``pg_server``, ``mariadb_server``);
- ``<!-- quickstart -->``: every line but ``sudo apt-get ...`` (this machine has python3-venv)
  runs with bash in a copy of the repository's files (``git ls-files``): it creates ``.venv``,
  installs poolproxy with pip and runs ``poolproxy -c config/minimal.yaml`` in the foreground;
- ``<!-- quickstart-console -->``: the one-line config change for the admin console, applied
  with SIGHUP as the README allows.

Then psycopg and PyMySQL connect through poolproxy as the new user, create a table and read it
back, the console answers ``SHOW POOLS`` with both pools, and SIGTERM stops poolproxy with
status 0.

Two substitutions, both through variables config/minimal.yaml reads, keep the README's command
literal and the test off shared state:

- The suite's servers already have a user ``app`` (other tests log in as it), so every ``app``
  in the README's SQL becomes a fresh name N (user, password and database alike), and poolproxy
  runs with ``APP_DB_USER=N APP_DB_PASSWORD=N`` (defaults in the file: ``app``, ``app``).
- Ports 6432/6033/9127, 5432/3306 may be taken or wrong here: ``POOLPROXY_PG_LISTEN``,
  ``POOLPROXY_MYSQL_LISTEN``, ``POOLPROXY_ADMIN_LISTEN``, ``POOLPROXY_PG_PORT`` and
  ``POOLPROXY_MYSQL_PORT`` point poolproxy at free ports and at the test servers.

pip needs the package index (or its cache) for poolproxy's dependencies and build backend.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from tests.harness import MariaDbServer, PgServer, free_port
from tests.harness.procs import process_tree, read_log

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
#: Creating the venv and installing with pip: seconds with a warm cache, minutes without.
START_TIMEOUT = 420.0

pytestmark = pytest.mark.timeout(900)


# ------------------------------------------------------------------------------ the README


def readme_block(marker: str) -> str:
    """The fenced code block right after ``<!-- marker -->`` in README.md."""
    text = README.read_text()
    match = re.search(rf"<!--\s*{re.escape(marker)}\s*-->\s*\n```[\w-]*\n(.*?)^```", text,
                      re.S | re.M)
    assert match, f"README.md has no fenced block after <!-- {marker} -->"
    return match.group(1)


def heredoc_sql(block: str) -> str:
    """The SQL of a ``... <<'SQL'`` here-document."""
    match = re.search(r"<<\s*'?SQL'?\s*\n(.*?)^SQL\s*$", block, re.S | re.M)
    assert match, f"no <<'SQL' ... SQL here-document in:\n{block}"
    return match.group(1)


def statements(sql: str) -> list[str]:
    return [s.strip() for s in re.split(r";\s*$", sql, flags=re.M) if s.strip()]


def renamed(sql: str, name: str) -> str:
    """Every `app` (user, password, database) in the README's SQL as `name`."""
    return re.sub(r"\bapp\b", name, sql)


def run_lines(block: str) -> list[str]:
    """The shell lines of a README block that this test runs (not the apt-get line)."""
    lines = [line.strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")
            and not re.match(r"(sudo\s+)?apt(-get)?\s", line)]


def test_readme_quickstart_blocks_are_what_this_test_expects() -> None:
    """Fast guard: the markers exist and the blocks have the shape the run below relies on."""
    run = run_lines(readme_block("quickstart"))
    assert run and run[-1].endswith("poolproxy -c config/minimal.yaml"), run
    assert any("python3 -m venv" in line for line in run), run
    pg = statements(heredoc_sql(readme_block("quickstart-sql-postgres")))
    assert any(re.match(r"CREATE ROLE app\b.*\bLOGIN\b.*PASSWORD 'app'", s, re.I) for s in pg), pg
    assert any("scram-sha-256" in s for s in pg), "the PostgreSQL SQL must make a SCRAM secret"
    my = statements(heredoc_sql(readme_block("quickstart-sql-mysql")))
    assert any(re.match(r"CREATE USER 'app'@'%' IDENTIFIED BY 'app'", s, re.I) for s in my), my
    assert any(s.upper().startswith("GRANT") for s in my), my
    assert run_lines(readme_block("quickstart-console")), "no console command"


# ------------------------------------------------------------------------------ helpers


def copy_repository(dest: Path) -> None:
    """The files a fresh clone has: git's tracked and not-ignored ones (or, without git, the
    tree minus caches and virtual environments)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, check=True, timeout=60).stdout
        names = [n for n in listed.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".mypy_cache",
                ".ruff_cache", "build", "dist"}
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(REPO).parts)
                 and not any(part.endswith(".egg-info") for part in p.parts)]
    for name in names:
        source = REPO / name
        if not source.is_file():  # deleted in the work tree, or a submodule
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def processes_named(root: int, word: str) -> list[int]:
    """`root` and the processes under it whose command line contains `word` (bash may exec the
    last command of its script itself)."""
    found = []
    for pid in process_tree(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if word in cmdline:
            found.append(pid)
    return found


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def console_pools(port: int, user: str) -> list[dict[str, Any]]:
    with psycopg.connect(host="127.0.0.1", port=port, user=user, password=user,
                         dbname="poolproxy", autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute("SHOW POOLS", prepare=False)  # type: ignore[call-overload]
        columns = [d.name for d in cur.description]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


def python_problem() -> str | None:
    """Why the README's `python3 -m venv ...` cannot run here, or None."""
    python3 = shutil.which("python3")
    if python3 is None:
        return "no python3 on PATH"
    probe = subprocess.run(
        [python3, "-c", "import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))"],
        capture_output=True, timeout=60)
    if probe.returncode != 0:
        return ("python3 on PATH is older than 3.11 or lacks venv/ensurepip (the README's "
                "apt-get line installs python3-venv)")
    return None


# ------------------------------------------------------------------------------ the run


@pytest.fixture
def quickstart_user(pg_server: PgServer, mariadb_server: MariaDbServer) -> Iterator[str]:
    """A fresh user (and database) made on both servers by the README's SQL, renamed."""
    name = f"qs_{secrets.token_hex(4)}"
    pg_sql = renamed(heredoc_sql(readme_block("quickstart-sql-postgres")), name)
    my_sql = renamed(heredoc_sql(readme_block("quickstart-sql-mysql")), name)
    try:
        with psycopg.connect(pg_server.dsn(), autocommit=True, connect_timeout=10) as conn:
            for statement in statements(pg_sql):  # one session: SET applies to what follows
                conn.execute(statement.encode())
        conn_my = mariadb_server.connect()
        try:
            with conn_my.cursor() as cur:
                for statement in statements(my_sql):
                    cur.execute(statement)
        finally:
            conn_my.close()
        yield name
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
            conn.execute(f'DROP ROLE IF EXISTS "{name}"'.encode())
        for statement in (f"DROP DATABASE IF EXISTS `{name}`", f"DROP USER IF EXISTS '{name}'@'%'"):
            mariadb_server.execute(statement)


def test_readme_quickstart_runs_as_written(
    quickstart_user: str, pg_server: PgServer, mariadb_server: MariaDbServer, tmp_path: Path
) -> None:
    problem = python_problem()
    if problem:
        pytest.skip(problem)
    name = quickstart_user
    checkout = tmp_path / "poolproxy"
    copy_repository(checkout)
    assert (checkout / "config" / "minimal.yaml").is_file() and (checkout / "pyproject.toml").is_file()

    pg_port, my_port, admin_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("POOLPROXY_CONFIG", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
           and not k.startswith(("POOLPROXY_", "APP_DB_"))}
    env.update({
        "APP_DB_USER": name, "APP_DB_PASSWORD": name,
        "POOLPROXY_PG_LISTEN": f"127.0.0.1:{pg_port}",
        "POOLPROXY_MYSQL_LISTEN": f"127.0.0.1:{my_port}",
        "POOLPROXY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "POOLPROXY_PG_PORT": str(pg_server.port),
        "POOLPROXY_MYSQL_PORT": str(mariadb_server.port),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    })
    # The venv's python3 must not be the one running pytest if that is a venv (PATH order).
    if sys.prefix != sys.base_prefix:
        venv_bin = str(Path(sys.prefix) / "bin")
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if p != venv_bin)
    script = "set -e\n" + "\n".join(run_lines(readme_block("quickstart"))) + "\n"
    log_path = tmp_path / "quickstart.log"
    with open(log_path, "wb") as log:
        shell = subprocess.Popen(["bash", "-c", script], cwd=checkout, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)

    def tail() -> str:
        return "\n".join(read_log(log_path).splitlines()[-60:])

    try:
        deadline = time.monotonic() + START_TIMEOUT
        while http_status(f"http://127.0.0.1:{admin_port}/readyz") != 200:
            assert shell.poll() is None, f"the README's run command exited:\n{tail()}"
            assert time.monotonic() < deadline, f"poolproxy not ready in {START_TIMEOUT}s:\n{tail()}"
            time.sleep(0.5)
        (pid,) = processes_named(shell.pid, "poolproxy -c config/minimal.yaml")

        # PostgreSQL through poolproxy, as the user the README's SQL made.
        with psycopg.connect(host="127.0.0.1", port=pg_port, user=name, password=name,
                             dbname=name, connect_timeout=10) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == (name, name)
            conn.execute("CREATE TABLE quickstart (x int)")
            conn.execute("INSERT INTO quickstart VALUES (42)")
            conn.commit()
            assert conn.execute("SELECT x FROM quickstart").fetchall() == [(42,)]

        # MySQL/MariaDB through poolproxy.
        my = pymysql.connect(host="127.0.0.1", port=my_port, user=name, password=name,
                             database=name, connect_timeout=10, autocommit=True)
        try:
            with my.cursor() as cur:
                cur.execute("SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1), DATABASE()")
                assert cur.fetchone() == (name, name)
                cur.execute("CREATE TABLE quickstart (x int)")
                cur.execute("INSERT INTO quickstart VALUES (42)")
                cur.execute("SELECT x FROM quickstart")
                assert cur.fetchall() == ((42,),)
        finally:
            my.close()

        # Without the console change, the console refuses the user.
        with pytest.raises(psycopg.OperationalError, match="may not use the admin console"):
            console_pools(pg_port, name)

        # The README's one-line change, then a reload.
        config_before = (checkout / "config" / "minimal.yaml").read_text()
        for line in run_lines(readme_block("quickstart-console")):
            subprocess.run(["bash", "-c", line], cwd=checkout, env=env, check=True, timeout=60)
        assert (checkout / "config" / "minimal.yaml").read_text() != config_before, \
            "the README's console command did not change config/minimal.yaml"
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:
            try:
                pools = console_pools(pg_port, name)
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, f"console still refused after SIGHUP:\n{tail()}"
                time.sleep(0.2)
        mine = {(row["listener"], row["database"], row["user"]) for row in pools}
        assert {("pg", name, name), ("mysql", name, name)} <= mine, pools

        # SIGTERM: a graceful stop, and the README's command ends with status 0.
        os.kill(pid, signal.SIGTERM)
        assert shell.wait(60) == 0, tail()
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(10)
