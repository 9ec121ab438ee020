"""What the scale benchmarks share: a child process measured from outside, and resumable results.

- :func:`measure` runs a command and samples, every 0.2 s, the RSS summed over its whole process
  tree (Beam worker processes, servers' children) and the size of directories it writes
  (shuffle / temp space); it can stop the command when the tree exceeds a memory limit, and
  reports wall time, CPU seconds of the tree, peaks and the load average before and after.
- :class:`ResultStore` keeps one JSON document of named results, rewritten atomically after
  each one, so an interrupted benchmark resumes where it stopped (finished entries are skipped).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from collections.abc import Sequence

from core.files import write_json_atomic


def tree_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
        stack.extend(children.get(current, []))
    return total


def directory_bytes(path: str) -> int:
    """Total size of the files under ``path`` (0 if it does not exist; files vanishing meanwhile are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (``/proc/loadavg``)."""
    return [round(x, 2) for x in os.getloadavg()]


def measure(command: Sequence[str], log_path: str, *, env: dict | None = None, rss_limit_bytes: int | None = None,
            watch_dirs: Sequence[str] = (), check: bool = True) -> dict:
    """Runs ``command`` (stdout and stderr to ``log_path``) and measures it from outside.

    Args:
      command: the argv.
      log_path: where its output goes.
      env: its environment (default: this process's).
      rss_limit_bytes: stop the command (SIGKILL of the tree's root) once its tree RSS exceeds this.
      watch_dirs: directories whose total file size is sampled (peak reported per directory).
      check: raise when the command fails (other than being stopped at the memory limit).

    Returns:
      ``{"wall_seconds", "cpu_seconds" (user + system of the finished tree), "peak_rss_bytes",
      "peak_dir_bytes": {dir: bytes}, "returncode", "stopped_at_rss_limit", "load_average_before",
      "load_average_after"}``.

    Raises:
      RuntimeError: the command failed and ``check`` is set (the message names the log).
    """
    peak, peak_dirs, stopped = 0, {d: 0 for d in watch_dirs}, False
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = load_average()
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env)
        done = threading.Event()

        def sample():
            nonlocal peak, stopped
            while not done.is_set():
                rss = tree_rss(process.pid)
                peak = max(peak, rss)
                for directory in watch_dirs:
                    peak_dirs[directory] = max(peak_dirs[directory], directory_bytes(directory))
                if rss_limit_bytes is not None and rss > rss_limit_bytes and not stopped:
                    stopped = True
                    process.kill()
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
    if code != 0 and check and not stopped:
        raise RuntimeError(f"{' '.join(command)} failed ({code}); see {log_path}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": wall, "cpu_seconds": cpu, "peak_rss_bytes": peak, "peak_dir_bytes": peak_dirs,
            "returncode": code, "stopped_at_rss_limit": stopped, "load_average_before": load_before,
            "load_average_after": load_average()}


class ResultStore:
    """Named results in one JSON file, written atomically after every :meth:`put` (resumable runs).

    Args:
      path: the JSON file (read if it exists).
      header: entries written at the top level on creation (command, date, ...); kept on resume.
    """

    def __init__(self, path: str, header: dict | None = None):
        self.path = path
        if os.path.isfile(path):
            with open(path) as f:
                self.document = json.load(f)
        else:
            self.document = {**(header or {}), "results": {}}
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.save()

    @property
    def results(self) -> dict:
        return self.document["results"]

    def __contains__(self, name: str) -> bool:
        return name in self.results

    def put(self, name: str, result: dict) -> None:
        self.results[name] = result
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.document, sort_keys=False)
