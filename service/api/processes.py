"""`OA_API_PROCESSES`: several API processes on one port, each with its own event loop and accept batcher.

The parent binds one public listening socket per process with SO_REUSEPORT, so that the kernel
spreads new connections over the processes (a shared socket would let whichever process wakes first
take most of them), then forks the processes, each running `service.api.listeners.serve` on its
socket. The admin listener (/metrics, /readyz, /console) is bound once, without SO_REUSEPORT, and
served by the first process only: a scrape or a console page always reaches the same process, and a
second copy of the port cannot be bound by mistake. Its per-process counters (requests, signature
failures) therefore count the first process's requests only; the Redis-backed figures are global.
Forking happens before any event loop or Redis connection exists: each process opens its own in
its lifespan.

The parent supervises. A process that exits unasked (a crash, the OOM killer) is started again in
its place, on freshly bound sockets (its own closed when it died, so the kernel stopped sending it
connections and the others took them all meanwhile), after a delay that doubles from 0.5 s to 30 s
while it keeps dying, and starts over once a process has served for 30 s. SIGTERM/SIGINT is
passed on to every process, which finishes its requests as uvicorn does, and the parent exits 0
once all have stopped; it exits 1 if the ports cannot be bound at start.

Why not uvicorn's own supervisor (`uvicorn.supervisors.Multiprocess`)? It restarts a dead process
too (every 0.5 s, without backoff), but it serves one app on sockets shared by every process, while
ours gives each process its own SO_REUSEPORT socket and runs the admin listener in the first only.

With one process (the default) nothing of this runs: `serve` binds both ports itself.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import TYPE_CHECKING

from service.api.listeners import BoundSockets, serve

if TYPE_CHECKING:
    from multiprocessing.context import ForkProcess
    from types import FrameType

    from service.settings import Settings

log = logging.getLogger("oa.api")
_BACKLOG = 2048  # uvicorn's default


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` with SO_REUSEPORT, as every process of the set binds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def admin_socket(host: str, port: int) -> socket.socket:
    """The admin listener's TCP socket, bound once for the whole set (no SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _child(settings: Settings, sockets: BoundSockets) -> None:
    # The parent's handlers were inherited with the fork; `serve` installs its own once it runs.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    serve(settings, sockets=sockets)


FIRST_DELAY_S = 0.5  # uvicorn's supervisor looks at its processes every 0.5 s
MAX_DELAY_S = 30.0
STABLE_S = 30.0  # a process that ran this long before it died starts the backoff over


@dataclass
class _Slot:
    """One of the N processes: the one running now, when it started, and when to start the next."""

    index: int
    process: ForkProcess | None = None
    started_s: float = 0.0
    delay_s: float = FIRST_DELAY_S
    restart_at_s: float | None = None


class _Supervisor:
    """The forked API processes: signals passed on, a process that dies started again with backoff."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("fork")
        self.slots = [_Slot(index) for index in range(settings.api_processes)]
        self.stopping = False
        # A signal wakes the wait at once, also while it only waits for a restart to be due.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    def stop(self, signum: int, _frame: FrameType | None = None) -> None:
        """Pass `signum` on to every process still running; from now on, nothing is restarted."""
        self.stopping = True
        for slot in self.slots:
            process = slot.process
            if process is not None and process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signum)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")

    def start(self, slot: _Slot) -> bool:
        """Bind the slot's sockets and fork its process; False (logged) if a port cannot be bound."""
        # Bound before the fork, closed in the parent after it: each process holds only its own
        # sockets, so none keeps a socket open that no process accepts on.
        try:
            sockets = BoundSockets(
                public=reuse_port_socket(self.settings.host, self.settings.port),
                admin=admin_socket(self.settings.admin_host, self.settings.admin_port)
                if slot.index == 0
                else None,
            )
        except OSError as exc:
            log.error("cannot bind the API's ports", extra={"error": str(exc)})  # noqa: TRY400 - no traceback
            return False
        process = self.context.Process(
            target=_child, args=(self.settings, sockets), name=f"oa-api-{slot.index + 1}"
        )
        process.start()
        for sock in sockets:
            if sock is not None:
                sock.close()
        slot.process, slot.started_s, slot.restart_at_s = process, time.monotonic(), None
        if self.stopping and process.pid is not None:  # a signal came while it was forked
            os.kill(process.pid, signal.SIGTERM)
        return True

    def run(self) -> int:
        """Start every process, keep them running until a signal, wait for all; the exit status."""
        for slot in self.slots:
            if self.stopping:  # SIGTERM while starting: start no more
                break
            if not self.start(slot):  # a port taken: stop what started, exit non-zero as uvicorn would
                self.stop(signal.SIGTERM)
                self._wait_for_all()
                return 1
        log.info("API processes started", extra={"count": len(self.slots)})
        while not self.stopping:
            self._wait_once()
        self._wait_for_all()
        return 0

    def _wait_once(self) -> None:
        """Wait for a process to exit, a restart to be due, or a signal; then act on whichever it was."""
        running = {slot.process.sentinel: slot for slot in self.slots if slot.process is not None}
        due = [slot.restart_at_s for slot in self.slots if slot.restart_at_s is not None]
        timeout_s = max(0.0, min(due) - time.monotonic()) if due else None
        ready = wait([*running, self._wake_read], timeout_s)
        if self._wake_read in ready:
            os.read(self._wake_read, 64)
        for sentinel in ready:
            if sentinel in running:
                self._exited(running[sentinel])
        now = time.monotonic()
        for slot in self.slots:
            if self.stopping or slot.restart_at_s is None or slot.restart_at_s > now:
                continue
            if not self.start(slot):  # a port taken meanwhile: try again later
                self._schedule(slot, now)

    def _exited(self, slot: _Slot) -> None:
        assert slot.process is not None
        slot.process.join()
        status, slot.process = slot.process.exitcode, None
        if self.stopping:
            return
        now = time.monotonic()
        if now - slot.started_s > STABLE_S:
            slot.delay_s = FIRST_DELAY_S  # it had been serving: a new problem starts a new backoff
        log.error(
            "an API process exited; restarting it",
            extra={"status": status, "detail": f"process {slot.index + 1}", "retry_in_s": slot.delay_s},
        )
        self._schedule(slot, now)

    def _schedule(self, slot: _Slot, now: float) -> None:
        slot.restart_at_s = now + slot.delay_s
        slot.delay_s = min(slot.delay_s * 2, MAX_DELAY_S)

    def _wait_for_all(self) -> None:
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join()
                slot.process = None


def run_api(settings: Settings) -> None:
    """Serve the API with `OA_API_PROCESSES` processes until a signal; exit 1 if the ports cannot be bound."""
    if settings.api_processes == 1:
        serve(settings)
        return
    supervisor = _Supervisor(settings)
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    status = supervisor.run()
    if status:
        raise SystemExit(status)
