"""The worker under `oa-webhooks run`: restarted when it exits, with backoff, each distinct failure told once.

A worker that cannot start (a handler module that does not import, say) exits at once, every
time. Restarting it every half second would print the same traceback twice a second forever;
instead the restarts back off (1 s, doubling to 30 s), a failure is printed the first time it
is seen (its output held back until the worker has loaded its handlers, or has been up
`STARTUP_S`), and events wait in the queue meanwhile.

`reload` restarts it at once on the code as it now is (a source file changed): the worker stops as
on SIGTERM, its running handlers finishing, and a new one starts as soon as it has exited. What the
new code prints, a failure too, is told once more.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from typing import IO

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
# Output of a worker younger than this is held back until it proves to be running, so that a
# failure seen before can stay silent; older workers' output is passed on as it comes.
STARTUP_S = 5.0
# The worker's line once every handler module has imported (workers/registry.py, `load_handlers`):
# a failure to start comes before it, so its output can be passed on from there.
_LOADED = re.compile(rb"loaded \d+ handlers from ")


def _say(text: str) -> None:
    print(f"oa-webhooks run: {text}", file=sys.stderr, flush=True)


class WorkerSupervisor:
    """Start `command`, and again after it exits: 1 s later, doubling to 30 s while it keeps failing."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self.delay_s = FIRST_DELAY_S
        self._started = 0.0
        self._restart_at: float | None = None
        self._held: list[bytes] = []
        self._live = False
        self._lock = threading.Lock()
        self._pump: threading.Thread | None = None
        self._last_failure: str | None = None
        self._reloading = False

    def start(self) -> None:
        """Start the worker, its output read by a thread that holds it back or passes it on."""
        self._held, self._live, self._restart_at = [], False, None
        self._started = time.monotonic()
        self.process = subprocess.Popen(  # noqa: S603 - our own fixed worker command
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert self.process.stdout is not None
        self._pump = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._pump.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            with self._lock:
                if not self._live and _LOADED.search(line):
                    self._held.append(line)
                    self._flush_held()
                elif self._live:
                    sys.stderr.buffer.write(line)
                    sys.stderr.flush()
                else:
                    self._held.append(line)

    def _go_live(self) -> None:
        with self._lock:
            self._flush_held()

    def _flush_held(self) -> None:
        sys.stderr.buffer.write(b"".join(self._held))
        sys.stderr.flush()
        self._held, self._live = [], True

    def reload(self, why: str) -> None:
        """Restart the worker now on the current code: stop it (SIGTERM) and start one when it has exited."""
        if self._reloading:
            return  # already stopping: the next worker imports the code as it is then, this change too
        _say(f"{why}: restarting the worker")
        self._reloading = True
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def check(self) -> None:
        """Call often: pass on the output of a worker that started, and restart one that exited, when due."""
        assert self.process is not None
        now = time.monotonic()
        if self.process.poll() is None:
            if not self._live and now - self._started > STARTUP_S:
                self._go_live()
            return
        if self._reloading:
            self._reloading = False
            if self._restart_at is None and self.process.returncode in (0, -signal.SIGTERM):
                if self._pump is not None:  # stopped by `reload`: what it said is news...
                    self._pump.join(timeout=5)
                with self._lock:
                    if self._repeats_last_failure():
                        # ...unless the reload caught it starting on the code that failed before, and
                        # it had failed again already: that was told.
                        self._held, self._live = [], True
                    else:
                        self._flush_held()
            elif self._restart_at is None:
                self._exited(now)  # it failed before the reload stopped it: told as any failure, once
            self._last_failure, self.delay_s = None, FIRST_DELAY_S  # the new code's failure is news
            self.start()
        elif self._restart_at is None:
            self._exited(now)
        elif now >= self._restart_at:
            self.start()

    def _repeats_last_failure(self) -> bool:
        lines = [line for line in b"".join(self._held).decode(errors="replace").splitlines() if line.strip()]
        return (
            bool(lines) and self._last_failure is not None and self._last_failure.endswith(f": {lines[-1]}")
        )

    def _exited(self, now: float) -> None:
        assert self.process is not None
        if self._pump is not None:
            self._pump.join(timeout=5)
        if now - self._started > MAX_DELAY_S:
            self.delay_s = FIRST_DELAY_S  # it had been running: a new problem starts a new backoff
        held = b"".join(self._held).decode(errors="replace")
        lines = [line for line in held.splitlines() if line.strip()]
        failure = f"status {self.process.returncode}: {lines[-1] if lines else '(no output)'}"
        if failure != self._last_failure:
            if not self._live:
                sys.stderr.write(held)
            _say(
                f"the worker exited with {failure}\n"
                "Events wait safely in the queue (Redis) until a worker runs them. Restarting the worker "
                f"in {self.delay_s:g}s, then at growing intervals up to {MAX_DELAY_S:g}s; "
                "this error is not printed again until it changes."
            )
            self._last_failure = failure
        self._restart_at = now + self.delay_s
        self.delay_s = min(self.delay_s * 2, MAX_DELAY_S)
