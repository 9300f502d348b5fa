"""Every problem of a config file is reported at once, each with its key path (not only the
first), and one mistake is reported once, not again through the values that depend on it."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, ConfigErrors, load_config, parse_config

PG: dict[str, Any] = {
    "name": "pg", "protocol": "postgres", "listen": "127.0.0.1:6432",
    "server": {"host": "127.0.0.1", "port": 5432},
    "users": [{"name": "app", "password": "secret"}],
}
MY: dict[str, Any] = {
    "name": "my", "protocol": "mysql", "listen": "127.0.0.1:6033",
    "server": {"host": "127.0.0.1"}, "users": [{"name": "app", "password": "secret"}],
}


def text(*listeners: dict[str, Any], **top: Any) -> str:
    return yaml.safe_dump({**top, "listeners": list(listeners) or [dict(PG)]}, sort_keys=False)


def problems(source: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """{key path: message} of every problem the parser reports for `source`."""
    with pytest.raises(ConfigError) as info:
        parse_config(source, env={} if env is None else env)
    found = {error.path: error.message for error in info.value.errors}
    assert len(found) == len(info.value.errors), "two problems with the same key path"
    return found


def test_problems_in_every_section_are_reported_together() -> None:
    found = problems(text(
        {**PG, "server": {"host": "db", "port": 70000}, "colour": "blue"},
        {**MY, "listen": "nope", "users": [{"name": "app"}], "pool_mode": "statement"},
        admin={"listen": "bad", "admin_users": ["a", "a"]},
        logging={"level": "loud", "format": "xml"},
        defaults={"pool_size": 0, "pool_sise": 3, "query_wait_timeout": "soon"},
        workers=0,
        extra=1,
    ))
    assert set(found) == {
        "extra", "admin.listen", "admin.admin_users[1]", "logging.level", "logging.format",
        "workers", "defaults.pool_sise", "defaults.pool_size", "defaults.query_wait_timeout",
        "listeners[0].colour", "listeners[0].server.port", "listeners[1].listen",
        "listeners[1].users[0].password",
    }, found
    assert found["defaults.pool_sise"] == "unknown key (did you mean pool_size?)"
    assert found["listeners[0].server.port"] == "must be 1..65535"


def test_every_unknown_key_of_one_mapping() -> None:
    found = problems(text({**PG, "colour": "blue", "size": 3, "sever": {}}))
    assert set(found) == {"listeners[0].colour", "listeners[0].size", "listeners[0].sever"}
    assert "did you mean server?" in found["listeners[0].sever"]


def test_problems_in_databases_and_users_of_one_listener() -> None:
    listener = {**PG, "databases": {"a": {"pool_size": -1}, "b": {"dbname": 5},
                                    "pgbouncer": {}},
                "users": [{"name": "u1", "password": ""}, {"name": "u2", "pasword": "x"},
                          {"name": "u1", "password": "y"}, "u3"]}
    found = problems(text(listener))
    assert set(found) == {
        "listeners[0].databases.a.pool_size", "listeners[0].databases.b.dbname",
        "listeners[0].databases.pgbouncer", "listeners[0].users[0].password",
        "listeners[0].users[1].pasword", "listeners[0].users[1].password",
        "listeners[0].users[2].name", "listeners[0].users[3]",
    }, found
    assert "duplicate user 'u1'" in found["listeners[0].users[2].name"]


def test_duplicates_and_conflicts_are_reported_with_other_problems() -> None:
    found = problems(text(dict(PG), {**MY, "name": "pg", "listen": "127.0.0.1:6432"},
                          {**PG, "name": "third", "listen": "127.0.0.1:7000",
                           "server": {"host": "h", "port": 0}}))
    assert set(found) == {"listeners[1].name", "listeners[1].listen",
                          "listeners[2].server.port"}
    assert "listeners[0]" in found["listeners[1].name"]
    assert "listeners[0].listen" in found["listeners[1].listen"]


def test_cross_checks_of_several_listeners() -> None:
    found = problems(text({**PG, "min_pool_size": 30},
                          {**MY, "pool_mode": "statement", "pool_size": 2, "min_pool_size": 3}))
    assert set(found) == {"listeners[0].min_pool_size", "listeners[1].pool_mode",
                          "listeners[1].min_pool_size"}


def test_a_variable_that_is_not_set_is_reported_once() -> None:
    listener = {**PG, "listen": "${NO_LISTEN}", "server": {"host": "db", "port": "${NO_PORT}"},
                "users": [{"name": "app", "password": "${NO_PW}"}]}
    found = problems(text(listener))
    assert set(found) == {"listeners[0].listen", "listeners[0].server.port",
                          "listeners[0].users[0].password"}
    assert all("NO_" in message and "not set" in message for message in found.values()), found


def test_a_bad_protocol_does_not_cascade() -> None:
    found = problems(text({**PG, "protocol": "oracle", "auth": {"type": "md5"},
                           "users": [{"name": "app"}]}))
    assert found == {"listeners[0].protocol": "must be one of postgres, mysql"}


def test_bad_defaults_do_not_cascade_into_listeners() -> None:
    found = problems(text({**PG, "min_pool_size": 10, "server": {"host": "h", "port": 0}},
                          defaults={"pool_size": "many"}))
    # min_pool_size 10 <= the configured pool_size cannot be judged while pool_size is invalid.
    assert set(found) == {"defaults.pool_size", "listeners[0].server.port"}


def test_errors_object_str_and_first_problem() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config(text({**PG, "listen": "x", "server": {"host": "h", "port": 0}}), env={})
    err = info.value
    assert isinstance(err, ConfigError)
    assert (err.path, err.message) == ("listeners[0].listen", "must be host:port, [ipv6]:port "
                                       "or :port")
    assert str(err).splitlines() == [f"{e.path}: {e.message}" for e in err.errors]
    assert len(err.errors) == 2
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and [e.path for e in copy.errors] == [e.path for e in err.errors]


def test_one_problem_is_a_plain_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text({**PG, "listen": "x"}), env={})
    assert type(info.value) is ConfigError
    assert info.value.errors == (info.value,)


def test_load_config_reports_every_problem_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text({**PG, "listen": "x"}, logging={"level": "loud"}))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert [e.path for e in info.value.errors] == ["logging.level", "listeners[0].listen"]
