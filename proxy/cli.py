"""Command line: `poolproxy -c CONFIG.yaml [--check]`, `poolproxy --version`. Parsing only."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .config import ConfigError, default_config_path, load_config, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poolproxy", description=__doc__)
    parser.add_argument("-c", "--config", help="config file (default: $POOLPROXY_CONFIG, "
                        "else config/poolproxy.yaml)")
    parser.add_argument("--check", action="store_true",
                        help="validate the config, print a summary, exit 0/1")
    parser.add_argument("--version", action="version", version=f"poolproxy {__version__}")
    args = parser.parse_args(argv)
    path = args.config or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"poolproxy: invalid config: {exc}", file=sys.stderr)
        return 1
    if args.check:
        print(summary(config))
        return 0
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
