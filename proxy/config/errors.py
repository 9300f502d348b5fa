"""Configuration errors: `ConfigError` (one problem, named by its key path), `ConfigErrors`
(several, reported together) and `Problems`, which collects them so that one run of the parser
reports every problem it can find instead of stopping at the first."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")


class ConfigError(Exception):
    """A configuration problem; ``str()`` is ``"<key path>: <message>"``."""

    def __init__(self, path: str, message: str) -> None:
        # Both parts go to Exception.args so the error pickles and compares sanely.
        super().__init__(path, message)
        self.path = path
        self.message = message

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        """Every problem this error stands for (itself, unless it is a ConfigErrors)."""
        return (self,)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigErrors(ConfigError):
    """Several configuration problems; ``str()`` has one ``"<key path>: <message>"`` line each.

    ``path`` and ``message`` are the first problem's, so code that reports one error still can.
    """

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        found = tuple(one for error in errors for one in error.errors)
        if not found:
            raise ValueError("ConfigErrors needs at least one error")
        super().__init__(found[0].path, found[0].message)
        self._errors = found

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        return self._errors

    def __str__(self) -> str:
        return "\n".join(f"{error.path}: {error.message}" for error in self._errors)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConfigErrors, (self._errors,))


def combine(errors: Iterable[ConfigError]) -> ConfigError:
    """One exception for ``errors``: the error itself when there is one, else ConfigErrors."""
    found = tuple(one for error in errors for one in error.errors)
    return found[0] if len(found) == 1 else ConfigErrors(found)


class Problems:
    """The errors found so far in one section of the config, at most one per key path (the
    first: a value whose ``${VAR}`` failed to expand is not reported again as malformed)."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []
        self._paths: set[str] = set()

    def __len__(self) -> int:
        return len(self.errors)

    def add(self, error: ConfigError) -> None:
        for one in error.errors:
            if one.path not in self._paths:
                self._paths.add(one.path)
                self.errors.append(one)

    def attempt(self, parse: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T | None:
        """``parse(...)``, or None after recording the ConfigError it raised."""
        try:
            return parse(*args, **kwargs)
        except ConfigError as exc:
            self.add(exc)
            return None

    def raise_any(self) -> None:
        """Raise every problem found, as one exception (nothing if there is none)."""
        if self.errors:
            raise combine(self.errors)
