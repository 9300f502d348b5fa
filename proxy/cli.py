"""The `poolproxy` command (and `python -m proxy`): parses the arguments, finds and loads the
config file, then prints the `--check` summary or runs the daemon (one process, or the
supervisor of `workers` processes). Every config problem is printed, one per line."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .config import (
    CONFIG_PATH_ENV,
    CONFIG_SEARCH_PATH,
    ConfigError,
    ConfigNotFound,
    find_config,
    load_config,
    summary,
    tls_problems,
)

DESCRIPTION = """\
poolproxy is a connection pooler for PostgreSQL and MySQL/MariaDB: applications connect to it
instead of to the database, and their many client connections share a small pool of server
connections. It runs in the foreground and logs to standard error."""

EPILOG = f"""\
config file: the one given with -c, else ${CONFIG_PATH_ENV}, else the first of
{" and ".join(CONFIG_SEARCH_PATH)} that exists.

SIGHUP reloads the config file; SIGTERM or SIGINT shut down gracefully."""


def invalid_config_message(exc: ConfigError) -> str:
    """What poolproxy prints for an invalid config: one line per problem, with its key path."""
    errors = exc.errors
    if len(errors) == 1:
        return f"poolproxy: invalid config: {errors[0]}"
    lines = [f"poolproxy: invalid config ({len(errors)} problems):"]
    lines.extend(f"  {error}" for error in errors)
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog="poolproxy", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parse.add_argument("-c", "--config", metavar="FILE",
                       help=f"config file (default: ${CONFIG_PATH_ENV}, else "
                       f"{', else '.join(CONFIG_SEARCH_PATH)})")
    parse.add_argument("--check", action="store_true",
                       help="validate the config, print a summary, exit 0 (valid) or 1")
    parse.add_argument("--version", action="version", version=f"poolproxy {__version__}")
    return parse


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = load_config(find_config(args.config))
    except ConfigNotFound as exc:
        print(f"poolproxy: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(invalid_config_message(exc), file=sys.stderr)
        return 1
    if args.check:
        print(summary(config))
        problems = tls_problems(config)
        for text in problems:
            print(text if text.startswith("warning: ") else f"error: {text}")
        return 1 if any(not t.startswith("warning: ") for t in problems) else 0
    from .daemon import run
    from .logs import setup_logging
    from .workers import WorkerContext, run_supervisor
    worker = WorkerContext.from_env()
    setup_logging(config.logging.level, config.logging.format,
                  None if worker is None else worker.index)
    if worker is not None:  # started by the supervisor: one of `workers` processes
        return run(config.for_worker(worker.index, worker.count), worker=worker)
    if config.workers > 1:
        return run_supervisor(config)
    return run(config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
