"""The compiled hot path and its fallback (proxy/_native.py, setup.py): POOLPROXY_PURE=1 loads
every compiled module from its `.py` file, a build from the current source is used, and a build
that is stale, partial or unrecorded is not (all or none, with a warning).

The whole unit suite runs against both builds: scripts/test.sh runs it once more with
POOLPROXY_PURE=1 when the compiled modules are in use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import proxy
from proxy import _native

PACKAGE = Path(proxy.__file__).resolve().parent
PROBE = ("import json, proxy, importlib\n"
         "print(json.dumps([proxy.COMPILED] + [importlib.import_module(m).__file__ "
         "for m in proxy._native.MODULES]))")


def _probe(cwd: Path, pure: str | None) -> tuple[bool, list[str], str]:
    """Import the compiled modules' names in a fresh interpreter: (COMPILED, their __file__,
    stderr)."""
    env = {k: v for k, v in os.environ.items() if k != _native.PURE_ENV}
    if pure is not None:
        env[_native.PURE_ENV] = pure
    env["PYTHONPATH"] = str(cwd)
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=60, check=True)
    compiled, *files = json.loads(result.stdout)
    return compiled, files, result.stderr


def _built() -> bool:
    return _native._unusable(str(PACKAGE)) is None


def test_pure_env_loads_every_module_from_source() -> None:
    compiled, files, _ = _probe(PACKAGE.parent, "1")
    assert compiled is False
    assert all(f.endswith(".py") for f in files), files


def test_compiled_modules_used_when_built() -> None:
    if not _built():
        pytest.skip(f"compiled modules not usable here: {_native._unusable(str(PACKAGE))}")
    for pure in (None, "0", ""):
        compiled, files, err = _probe(PACKAGE.parent, pure)
        assert compiled is True, err
        assert all(f.endswith(tuple(EXTENSION_SUFFIXES)) and ".py" not in Path(f).suffixes
                   for f in files), files


def test_stale_build_falls_back_to_source(tmp_path: Path) -> None:
    if not _built():
        pytest.skip("compiled modules not built")
    shutil.copytree(PACKAGE, tmp_path / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    codec = tmp_path / "proxy" / "postgres" / "codec.py"
    codec.write_text(codec.read_text() + "\n# edited after the build\n")
    compiled, files, err = _probe(tmp_path, None)
    assert compiled is False
    assert all(f.endswith(".py") and f.startswith(str(tmp_path)) for f in files), files
    assert "RuntimeWarning" in err and "stale" in err, err


# ------------------------------------------------------------------ the choice, on fake files


def _fake_package(root: Path, *, extensions: bool | int = True) -> Path:
    pkg = root / "proxy"
    for module in _native.MODULES:
        path = Path(_native.source_path(str(pkg), module))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"NAME = {module!r}\n")
    stems = [_native.source_path(str(pkg), m)[:-3] for m in _native.MODULES]
    stems.append(str(pkg / (_native.GROUP.split(".")[-1] + "__mypyc")))
    count = len(stems) if extensions is True else int(extensions)
    for stem in stems[:count]:
        Path(stem + EXTENSION_SUFFIXES[0]).write_bytes(b"")
    return pkg


def _write_record(pkg: Path) -> None:
    (pkg / _native.RECORD).write_text(json.dumps(_native.record(str(pkg), "test")))


def test_choice_on_fake_files(tmp_path: Path) -> None:
    assert _native._unusable(str(_fake_package(tmp_path / "none", extensions=0))) \
        == ("not compiled", False)
    partial = _fake_package(tmp_path / "partial", extensions=3)
    _write_record(partial)
    assert _native._unusable(str(partial)) == ("part of the compiled modules is missing", True)
    pkg = _fake_package(tmp_path / "full")
    why = _native._unusable(str(pkg))
    assert why is not None and why[1] and _native.RECORD in why[0]
    _write_record(pkg)
    assert _native._unusable(str(pkg)) is None
    source = Path(_native.source_path(str(pkg), _native.MODULES[-1]))
    source.write_text(source.read_text() + "# changed\n")
    assert _native._unusable(str(pkg)) == ("compiled from other source (a stale build)", True)
    (pkg / _native.RECORD).write_text("{")
    why = _native._unusable(str(pkg))
    assert why is not None and why[0].startswith("unreadable")


def test_source_finder_answers_only_for_its_modules(tmp_path: Path) -> None:
    pkg = _fake_package(tmp_path)
    finder = _native.SourceFinder(_native.MODULES)
    name = "proxy.postgres.codec"
    spec = finder.find_spec(name, [str(pkg / "postgres")])
    assert spec is not None and spec.origin == str(pkg / "postgres" / "codec.py")
    assert finder.find_spec("proxy.postgres.client", [str(pkg / "postgres")]) is None
    assert finder.find_spec(name, None) is None
