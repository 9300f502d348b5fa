"""Process and polling helpers shared by the harness's servers (``MariaDbServer``, ``PgServer``)
and the proxy (``ProxyProcess``): stop a child process, poll a value until it is what we want,
read a log file, list a process tree.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM ``proc`` if it still runs and wait up to ``timeout`` for it to exit; SIGKILL it
    (and wait again, briefly) if it does not."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def poll(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float,
         interval: float = 0.05) -> T:
    """Call ``fetch()`` every ``interval`` seconds until ``done`` holds for its value or
    ``timeout`` has passed; returns the last value (``fetch`` runs at least once, and on a
    timeout its last run is after the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def read_log(path: Path) -> str:
    """The text of a log file ('' if it does not exist yet)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                data = fh.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: parse after the last ')'.
        ppid = int(data[data.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree
