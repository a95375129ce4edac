"""wrk, from Debian's package (found on PATH, else installed with apt-get), driven by wrk/signed.lua."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.measures import LoadResult

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from benchmarks.bodies import Signed

SCRIPT = Path(__file__).resolve().parent / "wrk" / "signed.lua"
_MARKER = "BENCH_WRK "
_STALL_S = 2.0
_PROGRESS_EVERY_S = 0.1  # a read of the Redis under test: rarely, while it is being measured


def find_wrk(*, install: bool) -> str | None:
    """The wrk binary; with `install`, as root, `apt-get install wrk` first if it is missing."""
    found = shutil.which("wrk")
    if found or not install or not shutil.which("apt-get") or os.geteuid() != 0:
        return found
    print("bench: installing wrk from Debian's package (apt-get install wrk)", flush=True)
    if not _apt_get("install", "-y", "-qq", "wrk"):
        _apt_get("update", "-qq")
        _apt_get("install", "-y", "-qq", "wrk")
    return shutil.which("wrk")


def _apt_get(*args: str) -> bool:
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        ["apt-get", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    return done.returncode == 0


def _stop_when_done(
    process: subprocess.Popen[str], markers: list[Path], progress: Callable[[], int] | None, bound_s: float
) -> None:
    deadline = time.monotonic() + bound_s
    last, last_change = -1, time.monotonic()
    next_progress = last_change
    while process.poll() is None and time.monotonic() < deadline:
        if all(marker.exists() for marker in markers):
            break
        now = time.monotonic()
        if progress is not None and now >= next_progress:
            next_progress = now + _PROGRESS_EVERY_S
            current = progress()
            if current != last:
                last, last_change = current, now
            elif now - last_change > _STALL_S:
                break
        time.sleep(0.005)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)


def write_thread_files(prefix: Path, events: Iterable[Signed], threads: int) -> int:
    """Deal the events round-robin into `<prefix>.0`, `<prefix>.1`, ... (one per wrk thread)."""
    files = [prefix.with_name(f"{prefix.name}.{k}").open("wb") for k in range(threads)]
    count = 0
    try:
        for count, event in enumerate(events, start=1):
            files[(count - 1) % threads].write(f"{event.signature} ".encode() + event.body + b"\n")
    finally:
        for file in files:
            file.close()
    return count


def run(
    wrk: str,
    url: str,
    prefix: Path,
    *,
    threads: int,
    connections: int,
    duration_s: float | None = None,
    progress: Callable[[], int] | None = None,
    bound_s: float = 120,
    cpus: str | None = None,
) -> LoadResult:
    """A duration run (`duration_s`), or, without it, a run that sends every body once and ends
    when each thread has all its answers (stopped with SIGINT, which makes wrk report). Such a
    run also stops once `progress()` (the events stored so far) stays put for `_STALL_S`. With `cpus`
    (a `taskset -c` list), wrk runs on those CPUs only."""
    markers = [prefix.with_name(f"{prefix.name}.{k}.done") for k in range(threads)]
    for marker in markers:
        marker.unlink(missing_ok=True)
    seconds = duration_s if duration_s is not None else bound_s
    argv = ["taskset", "-c", cpus] if cpus else []
    argv += [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
    argv += ["-s", str(SCRIPT), url, "--", str(prefix)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if duration_s is None:
        _stop_when_done(process, markers, progress, bound_s)
    output, _ = process.communicate(timeout=bound_s + 30)
    line = next((ln for ln in output.splitlines() if ln.startswith(_MARKER)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    data = json.loads(line.removeprefix(_MARKER))
    errors = data["errors"]
    return LoadResult(
        duration_s=data["duration_us"] / 1e6,
        statuses=Counter({int(status): count for status, count in data["statuses"].items()}),
        errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        p50_ms=data["latency_us"]["p50"] / 1000,
        p99_ms=data["latency_us"]["p99"] / 1000,
        exhausted=duration_s is not None and data["exhausted_threads"] > 0,
    )
