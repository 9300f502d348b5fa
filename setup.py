"""Builds poolproxy: the pure-Python package, plus its hot path compiled with mypyc where possible.

The metadata is in pyproject.toml; this file only adds the extension modules. The modules
compiled are `MODULES` of proxy/_native.py (measured in docs/benchmarks.md). They are built
when a C compiler, the Python headers and mypy (it ships mypyc; a build requirement in
pyproject.toml) are there, and POOLPROXY_NO_COMPILE is not set; otherwise, or when the build
fails, the package installs pure (a warning says why). The `.py` modules are always installed:
they are the reference and the fallback (POOLPROXY_PURE=1 forces them at run time).

    pip install .                                  # compiled where possible
    POOLPROXY_NO_COMPILE=1 pip install .           # pure
    python3 setup.py build_ext --inplace           # compile in a checkout (`pip install -e .`)

After a successful build, build_ext writes proxy/_native.json (the digest of the compiled
source): without it, or when the source changed since, the compiled modules are not used.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import sys
import sysconfig
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE: dict[str, Any] = runpy.run_path(os.path.join(HERE, "proxy", "_native.py"))

#: Stands for the extension modules until build_ext runs mypyc (so that commands that build
#: nothing, e.g. the metadata steps of a pip install, do not pay for mypyc's type check). It
#: also marks the wheel as platform-specific.
PLACEHOLDER = Extension(NATIVE["GROUP"] + "__placeholder", sources=[])


def _warn(message: str) -> None:
    print(f"WARNING: poolproxy installs without its compiled modules: {message}", file=sys.stderr)


def _cannot_compile() -> str | None:
    """Why the compiled modules cannot be built here, or None."""
    if os.environ.get("POOLPROXY_NO_COMPILE", "") not in ("", "0"):
        return "POOLPROXY_NO_COMPILE is set"
    if sys.implementation.name != "cpython":
        return f"mypyc needs CPython, not {sys.implementation.name}"
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    if not cc or shutil.which(cc[0]) is None:
        return f"no C compiler ({' '.join(cc) or 'CC'} not found)"
    include = sysconfig.get_paths().get("include") or ""
    if not os.path.exists(os.path.join(include, "Python.h")):
        return f"no Python headers (Python.h) in {include}"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypy (mypyc) is not installed"
    return None


def _mypycify() -> list[Extension]:
    why = _cannot_compile()
    if why is not None:
        _warn(why)
        return []
    from mypyc.build import mypycify

    paths = [NATIVE["source_path"](os.path.join(HERE, "proxy"), m) for m in NATIVE["MODULES"]]
    cwd = os.getcwd()
    os.chdir(HERE)  # mypyc works with paths relative to the project (its C in build/)
    try:
        return list(mypycify([os.path.relpath(p, HERE) for p in paths], opt_level="3",
                             group_name=NATIVE["GROUP"]))
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error
        _warn(f"mypyc failed: {exc!r}")
        return []
    finally:
        os.chdir(cwd)


class BuildExt(build_ext):
    """build_ext that runs mypyc first and falls back to a pure install when anything fails."""

    def finalize_options(self) -> None:
        if self.distribution.ext_modules == [PLACEHOLDER]:
            # egg_info (run alone for pip's metadata steps) and sdist finalize build_ext only to
            # list its sources: mypyc's generated C is no source to ship, and takes a while.
            metadata_only = set(self.distribution.commands) <= {"egg_info", "dist_info", "sdist"}
            self.distribution.ext_modules = [] if metadata_only else _mypycify()
        super().finalize_options()

    def run(self) -> None:
        if not self.extensions:
            return
        record = self._record_path()
        if os.path.exists(record):  # written again only when this build succeeds
            os.remove(record)
        try:
            super().run()
        except Exception as exc:  # the compiler failed (CompileError, LinkError, ...)
            self._undo()
            _warn(f"building the extension modules failed: {exc}")
            return
        try:
            import mypy.version

            mypy_version = mypy.version.__version__
        except ImportError:
            mypy_version = "unknown"
        os.makedirs(os.path.dirname(record), exist_ok=True)
        with open(record, "w") as fh:
            json.dump(NATIVE["record"](os.path.join(HERE, "proxy"), mypy_version), fh, indent=1)
            fh.write("\n")

    def _record_path(self) -> str:
        """Where RECORD goes: the `proxy` directory the extension modules are built into."""
        return os.path.join(os.path.dirname(self.get_ext_fullpath(NATIVE["GROUP"])), NATIVE["RECORD"])

    def _undo(self) -> None:
        """Remove what a failed build left (the compiled modules are used all or none)."""
        for ext in self.extensions:
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                os.remove(path)

    def get_outputs(self) -> list[str]:
        outputs = list(super().get_outputs())
        if self.extensions and os.path.exists(self._record_path()):
            outputs.append(self._record_path())
        return outputs


setup(ext_modules=[PLACEHOLDER], cmdclass={"build_ext": BuildExt})
