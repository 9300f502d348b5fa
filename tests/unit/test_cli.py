"""The command line in-process: where the config file is looked for (-c, $POOLPROXY_CONFIG,
./poolproxy.yaml, /etc/poolproxy/poolproxy.yaml) and the error that lists every path tried,
`--help`, `--check` printing every problem, and a rejected reload logging every problem."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from proxy import cli
from proxy.config import (
    CONFIG_SEARCH_PATH,
    ConfigNotFound,
    find_config,
    load_config,
)
from proxy.config import locate as locate_module

VALID = yaml.safe_dump({"listeners": [{
    "name": "pg", "protocol": "postgres", "listen": "127.0.0.1:16432",
    "server": {"host": "127.0.0.1", "port": 5432},
    "users": [{"name": "app", "password": "secret"}]}]})
INVALID = VALID.replace("127.0.0.1:16432", "nope").replace("port: 5432", "port: 0") \
    + "logging: {level: loud}\n"
ETC = "/etc/poolproxy/poolproxy.yaml"


def exists_only(*paths: str) -> Callable[[str], bool]:
    return lambda path: path in paths


# ------------------------------------------------------------------------------- search order


def test_search_path_is_cwd_then_etc() -> None:
    assert CONFIG_SEARCH_PATH == ("./poolproxy.yaml", ETC)


def test_dash_c_wins_over_everything() -> None:
    everything = exists_only("/x.yaml", "/env.yaml", "./poolproxy.yaml", ETC)
    assert find_config("/x.yaml", {"POOLPROXY_CONFIG": "/env.yaml"}, everything) == "/x.yaml"


def test_environment_wins_over_the_search_path() -> None:
    found = exists_only("/env.yaml", "./poolproxy.yaml", ETC)
    assert find_config(None, {"POOLPROXY_CONFIG": "/env.yaml"}, found) == "/env.yaml"


def test_cwd_file_wins_over_etc() -> None:
    assert find_config(None, {}, exists_only("./poolproxy.yaml", ETC)) == "./poolproxy.yaml"
    assert find_config(None, {"POOLPROXY_CONFIG": ""}, exists_only(ETC)) == ETC


def test_nothing_found_lists_every_path_tried() -> None:
    with pytest.raises(ConfigNotFound) as info:
        find_config(None, {}, exists_only())
    assert info.value.tried == CONFIG_SEARCH_PATH
    for path in CONFIG_SEARCH_PATH:
        assert path in str(info.value)
    assert "config/poolproxy.yaml" not in str(info.value).replace(ETC, "")


def test_a_missing_environment_file_is_an_error_not_a_fallback() -> None:
    with pytest.raises(ConfigNotFound) as info:
        find_config(None, {"POOLPROXY_CONFIG": "/gone.yaml"}, exists_only("./poolproxy.yaml"))
    assert info.value.tried == ("/gone.yaml",)
    assert "/gone.yaml" in str(info.value) and "POOLPROXY_CONFIG" in str(info.value)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, no $POOLPROXY_CONFIG, and /etc/... moved into tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POOLPROXY_CONFIG", raising=False)
    etc = tmp_path / "etc" / "poolproxy.yaml"
    monkeypatch.setattr(locate_module, "CONFIG_SEARCH_PATH", ("./poolproxy.yaml", str(etc)))
    return tmp_path


def test_main_reads_poolproxy_yaml_of_the_working_directory(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "poolproxy.yaml").write_text(VALID)
    (workdir / "etc").mkdir()
    (workdir / "etc" / "poolproxy.yaml").write_text(INVALID)
    assert cli.main(["--check"]) == 0
    assert "config: ./poolproxy.yaml" in capsys.readouterr().out


def test_main_falls_back_to_etc(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "etc").mkdir()
    (workdir / "etc" / "poolproxy.yaml").write_text(VALID)
    assert cli.main(["--check"]) == 0
    assert f"config: {workdir / 'etc' / 'poolproxy.yaml'}" in capsys.readouterr().out


def test_main_without_any_config_says_where_it_looked(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--check"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("poolproxy: no config file found")
    assert "./poolproxy.yaml" in err and str(workdir / "etc" / "poolproxy.yaml") in err
    assert "-c" in err and "POOLPROXY_CONFIG" in err


def test_main_uses_the_environment_variable(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "poolproxy.yaml").write_text(INVALID)
    (workdir / "env.yaml").write_text(VALID)
    monkeypatch.setenv("POOLPROXY_CONFIG", str(workdir / "env.yaml"))
    assert cli.main(["--check"]) == 0
    assert f"config: {workdir / 'env.yaml'}" in capsys.readouterr().out


# ------------------------------------------------------------------------------- --help


def test_help_describes_poolproxy_and_the_search_order(
    capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "connection pooler for PostgreSQL and MySQL" in out
    assert "Parsing only" not in out and (cli.__doc__ or "").splitlines()[0] not in out
    flat = " ".join(out.split())
    order = ["-c", "$POOLPROXY_CONFIG", "./poolproxy.yaml", ETC]
    positions = [flat.index(item, flat.index("config file:")) for item in order]
    assert positions == sorted(positions), flat


# ------------------------------------------------------------------------------- every problem


def test_check_prints_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(INVALID)
    assert cli.main(["-c", str(path), "--check"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert lines[0] == "poolproxy: invalid config (3 problems):"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "logging.level", "listeners[0].listen", "listeners[0].server.port"]


def test_check_of_one_problem_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(VALID.replace("port: 5432", "port: 0"))
    assert cli.main(["-c", str(path), "--check"]) == 1
    assert capsys.readouterr().err == (
        "poolproxy: invalid config: listeners[0].server.port: must be 1..65535\n")


def test_rejected_reload_logs_every_problem_and_keeps_the_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from proxy.daemon import Daemon

    path = tmp_path / "c.yaml"
    path.write_text(VALID)
    daemon = Daemon(load_config(path, env=dict(os.environ)))
    running = daemon.config
    path.write_text(INVALID)
    with caplog.at_level(logging.ERROR, logger="poolproxy.daemon"):
        assert daemon.reload() is False
    assert daemon.config is running
    messages = [r.getMessage() for r in caplog.records if r.name == "poolproxy.daemon"]
    assert len(messages) == 3, messages
    for key in ("logging.level", "listeners[0].listen", "listeners[0].server.port"):
        assert any(key in m and "keeping the running config" in m for m in messages), key
