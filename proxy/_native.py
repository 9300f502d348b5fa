"""The mypyc-compiled hot path: which modules are compiled, and whether this process uses them.

setup.py compiles `MODULES` with mypyc where it can (one group: they call each other natively)
and, when the whole build succeeded, writes `RECORD` next to this file: a digest of the modules'
source. The `.py` files stay the reference and the fallback. `select()`, called by
proxy/__init__.py before any of these modules is imported, keeps the compiled modules (the
import system prefers an extension module to a `.py` of the same name) only when

- POOLPROXY_PURE is unset, empty or "0" (POOLPROXY_PURE=1 forces the `.py` modules), and
- every extension module is there, with the record, which matches the source of every module
  (an extension built from other source, e.g. in a checkout edited or updated after
  `setup.py build_ext --inplace`, never runs).

Otherwise a meta-path finder loads every module of `MODULES` from its `.py` file: all of them
or none, since compiled modules call into each other and a compiled class cannot subclass an
interpreted one. A stale or unrecorded build is also reported with a RuntimeWarning.

Standard library only, no side effect at import: setup.py runs this file to learn `MODULES`.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

#: Compiled by setup.py, measured in docs/benchmarks.md (hot path of both protocols). Only
#: modules of plain classes and functions: nothing here subclasses an asyncio class.
MODULES = (
    "proxy.core.statements",
    "proxy.postgres.codec",
    "proxy.postgres.prepared",
    "proxy.mysql.wire",
    "proxy.mysql.response",
    "proxy.mysql.prepared",
)
#: mypyc's group name: the shared library of the compiled code is `proxy/_mypyc__mypyc.*.so`.
GROUP = "proxy._mypyc"
#: What setup.py writes in the package directory after a successful build.
RECORD = "_native.json"
#: Set (to anything but "" or "0") to force the `.py` modules.
PURE_ENV = "POOLPROXY_PURE"

#: After `select()`: whether the compiled modules are in use, and why (or why not).
compiled = False
reason = "not selected yet"


def source_path(package_dir: str, module: str) -> str:
    """The `.py` file of `module` (a name from MODULES) under the `proxy` package directory."""
    return os.path.join(package_dir, *module.split(".")[1:]) + ".py"


def source_digest(package_dir: str) -> str:
    """sha256 over the names and source of MODULES."""
    digest = hashlib.sha256()
    for module in MODULES:
        with open(source_path(package_dir, module), "rb") as fh:
            source = fh.read()
        digest.update(f"{module}\0{len(source)}\0".encode())
        digest.update(source)
    return digest.hexdigest()


def record(package_dir: str, mypy_version: str) -> dict[str, object]:
    """The content of RECORD for a build of the current source."""
    return {"modules": list(MODULES), "digest": source_digest(package_dir), "mypy": mypy_version}


def _extension_present(stem: str) -> bool:
    return any(os.path.exists(stem + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _unusable(package_dir: str) -> tuple[str, bool] | None:
    """None when the compiled modules are present and built from the current source, else
    (why not, whether that deserves a warning)."""
    stems = [source_path(package_dir, m)[:-3] for m in MODULES]
    stems.append(os.path.join(package_dir, GROUP.split(".")[-1] + "__mypyc"))
    present = [_extension_present(stem) for stem in stems]
    if not any(present):
        return "not compiled", False
    if not all(present):
        return "part of the compiled modules is missing", True
    try:
        with open(os.path.join(package_dir, RECORD), "rb") as fh:
            built = json.load(fh)
    except FileNotFoundError:
        return f"no {RECORD}: not built by setup.py", True
    except (OSError, ValueError) as exc:
        return f"unreadable {RECORD}: {exc}", True
    if not isinstance(built, dict) or built.get("modules") != list(MODULES):
        return f"{RECORD} lists other modules", True
    try:
        digest = source_digest(package_dir)
    except FileNotFoundError:  # no source to compare with: the compiled modules are all there is
        return None
    if built.get("digest") != digest:
        return "compiled from other source (a stale build)", True
    return None


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of MODULES as their `.py` file, ahead of the path finder (which would
    take an extension module of the same name first)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in self.names or not path:
            return None
        leaf = fullname.rpartition(".")[2] + ".py"
        for entry in path:
            candidate = os.path.join(entry, leaf)
            if os.path.isfile(candidate):
                return importlib.util.spec_from_file_location(fullname, candidate)
        return None


def select(package_dir: str) -> bool:
    """Choose compiled or pure modules for this process (once, before any of them is imported);
    returns `compiled`."""
    global compiled, reason
    if any(isinstance(f, SourceFinder) for f in sys.meta_path):  # already chose pure
        return compiled
    pure = os.environ.get(PURE_ENV, "")
    if pure not in ("", "0"):
        why, warn = f"{PURE_ENV}={pure}", False
    else:
        unusable = _unusable(package_dir)
        if unusable is None:
            compiled, reason = True, "compiled with mypyc"
            return True
        why, warn = unusable
    compiled, reason = False, why
    if warn:
        warnings.warn(f"poolproxy: the compiled modules in {package_dir} are not used ({why}); "
                      "rebuild them (python3 setup.py build_ext --inplace) or delete them",
                      RuntimeWarning, stacklevel=2)
    sys.meta_path.insert(0, SourceFinder(MODULES))
    return False
