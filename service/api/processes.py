"""`OA_API_PROCESSES`: several API processes on one port, each with its own event loop and accept batcher.

The parent binds one public listening socket per process with SO_REUSEPORT, so that the kernel
spreads new connections over the processes (a shared socket would let whichever process wakes first
take most of them), then forks the processes, each running `service.listeners.serve` on its socket.
The admin listener (/metrics, /readyz, /console) is bound once, without SO_REUSEPORT, and served by
the first process only: a scrape or a console page always reaches the same process, and a second
copy of the port cannot be bound by mistake. Its per-process counters (requests, signature
failures) therefore count the first process's requests only; the Redis-backed figures are global. The
parent only supervises: SIGTERM/SIGINT is passed on to every process, which finishes its requests
as uvicorn does; a process that dies stops the others too, and the parent exits with its status,
for compose's `restart:` (or `make run`) to start the whole set again. Forking happens before any
event loop or Redis connection exists: each process opens its own in its lifespan.

With one process (the default) nothing of this runs: `serve` binds both ports itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
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


class _Supervisor:
    """The forked API processes: signals passed on, and all stopped when one exits on its own."""

    def __init__(self, processes: list[ForkProcess]) -> None:
        self.processes = processes
        self.stopping = False
        self.status = 0

    def stop(self, signum: int, _frame: FrameType | None = None) -> None:
        """Pass `signum` on to every process still running; from now on, exits are expected."""
        self.stopping = True
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signum)

    def wait(self) -> int:
        """Wait until every process has exited; the status of the first that exited unasked, else 0."""
        running = list(self.processes)
        while running:
            ended = wait([p.sentinel for p in running])
            for process in [p for p in running if p.sentinel in ended]:
                process.join()
                running.remove(process)
                if not self.stopping:
                    log.error("an API process exited; stopping the others", extra={"exit": process.exitcode})
                    self.status = process.exitcode or 1
                    self.stop(signal.SIGTERM)
        return self.status


def run_api(settings: Settings) -> None:
    """Serve the API with `OA_API_PROCESSES` processes; returns (or exits non-zero) once they stop."""
    count = settings.api_processes
    if count == 1:
        serve(settings)
        return
    context = multiprocessing.get_context("fork")
    supervisor = _Supervisor([])
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    for index in range(count):
        if supervisor.stopping:  # SIGTERM while starting: start no more
            break
        # Bound before the fork, closed in the parent after it: each process holds only its own
        # sockets, so none keeps a socket open that no process accepts on.
        try:
            sockets = BoundSockets(
                public=reuse_port_socket(settings.host, settings.port),
                admin=admin_socket(settings.admin_host, settings.admin_port) if index == 0 else None,
            )
        except OSError as exc:  # a port taken: stop what started, exit non-zero as uvicorn would
            log.error("cannot bind the API's ports", extra={"error": str(exc)})  # noqa: TRY400 - no traceback
            supervisor.status = 1
            supervisor.stop(signal.SIGTERM)
            break
        process = context.Process(target=_child, args=(settings, sockets), name=f"oa-api-{index + 1}")
        supervisor.processes.append(process)
        process.start()
        for sock in sockets:
            if sock is not None:
                sock.close()
    log.info("API processes started", extra={"count": count})
    status = supervisor.wait()
    if status:
        raise SystemExit(status)
