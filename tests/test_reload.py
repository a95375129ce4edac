"""Reload under `oa-webhooks run`: a saved handler module runs on the next event, with no restart by hand.

Each test runs `oa-webhooks run` in a fresh clone of this branch (its code imported through PYTHONPATH)
and edits a module in the clone's workers/handlers/, as a user edits theirs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from redis import Redis

from service.ops.cli.reload import Watcher
from service.ops.cli.supervise import WorkerSupervisor
from service.store.ledger import event_key
from tests.processes import ROOT, wait_for, wait_until_ready
from tests.redis_server import free_port

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
MODULE = """
import pathlib

from workers import Context, Event, on

with (pathlib.Path(__file__).parent.parent.parent / "imports.log").open("a") as imports:
    imports.write("{version}\\n")
{broken}

@on("lead.created")
async def probe(event: Event, ctx: Context) -> None:
    ctx.log.warning("{version} saw %s", event.id)
"""


class Run:
    """`oa-webhooks run` in a clone, its output in a file; `send` posts a signed event as a user would."""

    def __init__(self, clone: Path, *args: str) -> None:
        self.clone = clone
        self.redis_port, api_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OA_") and k != "REDIS_URL"}
        self.env |= {
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "OA_PORT": str(api_port),
            "OA_ADMIN_PORT": str(free_port()),
            "OA_LOG_FORMAT": "json",
            "PYTHONPATH": str(clone),
        }
        self.output = clone / "run.log"
        self._log = self.output.open("wb")
        self.process = subprocess.Popen(
            [str(BIN / "oa-webhooks"), "run", *args],
            cwd=clone,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until_ready(f"http://127.0.0.1:{api_port}", timeout_s=30)

    def text(self) -> str:
        """Everything printed so far."""
        return self.output.read_text(encoding="utf-8", errors="replace")

    def write(self, version: str, *, broken: bool = False) -> None:
        """Write workers/handlers/reload_probe.py: version `version`, raising at import if `broken`."""
        source = MODULE.format(
            version=version, broken=f'raise RuntimeError("{version} is broken")' if broken else ""
        )
        (self.clone / "workers" / "handlers" / "reload_probe.py").write_text(source, encoding="utf-8")

    def send(self, event_id: str) -> None:
        """`oa-webhooks send lead.created --id ID`, signed with the secret `run` wrote to .env: accepted."""
        sent = subprocess.run(
            [str(BIN / "oa-webhooks"), "send", "lead.created", "--id", event_id],
            cwd=self.clone,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert sent.stdout.startswith("202 "), sent.stdout + sent.stderr

    def wait_for(self, pattern: str, *, timeout_s: float = 30, count: int = 1) -> None:
        """Wait until the output holds `pattern` (a regular expression) at least `count` times."""
        wait_for(lambda: len(re.findall(pattern, self.text())) >= count, timeout_s=timeout_s, what=pattern)

    def imports(self) -> list[str]:
        """The versions of the module that a worker imported, in order."""
        log = self.clone / "imports.log"
        return log.read_text(encoding="utf-8").split() if log.exists() else []

    def stop(self) -> None:
        """Ctrl-C, as in a terminal."""
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout=60)
        self._log.close()


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh clone of this branch."""
    folder = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(folder)], check=True, timeout=60)
    return folder


def _never(predicate: Callable[[], bool], *, for_s: float) -> bool:
    """True if `predicate` stayed false for `for_s` seconds (for what must not happen)."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        if predicate():
            return False
        time.sleep(0.05)
    return True


def test_a_changed_module_runs_on_the_next_event_and_a_broken_one_is_told_once(clone: Path) -> None:
    """v1 handles an event; saved as v2, the next is v2's; broken, it is told once and events wait for v4."""
    (clone / "workers" / "handlers" / "reload_probe.py").write_text(
        MODULE.format(version="v1", broken=""), encoding="utf-8"
    )
    run = Run(clone)
    try:
        run.wait_for(r"loaded \d+ handlers from workers\.handlers")
        run.send("r1")
        run.wait_for(r"v1 saw r1")

        run.write("v2")
        run.wait_for(r"workers/handlers/reload_probe\.py changed: restarting the worker")
        run.send("r2")
        run.wait_for(r"v2 saw r2")
        assert "v1 saw r2" not in run.text()

        run.write("v3", broken=True)
        run.wait_for(r"oa-webhooks run: the worker exited with status 3: .*v3 is broken")
        run.send("r3")
        # Restarted with backoff (1 s, then 2 s), failing each time, and told only the first time.
        wait_for(lambda: run.imports().count("v3") >= 3, timeout_s=30, what="three starts of v3")
        with Redis(port=run.redis_port) as redis:
            assert redis.hget(event_key("r3"), "state") == b"queued", "r3 waits in the queue"

        run.write("v4")
        run.wait_for(r"v4 saw r3")
    finally:
        run.stop()
    text = run.text()
    assert text.count("RuntimeError: v3 is broken") == 3, text  # traceback, worker's line, run's line
    assert text.count("oa-webhooks run: the worker exited") == 1, text
    assert "reload on: the worker restarts when a .py file under workers/ changes" in text
    assert "v3 saw" not in text


SLOW = """
import asyncio
import pathlib

from workers import Context, Event, on

FLAG = pathlib.Path(__file__).parent.parent.parent / "go"


@on("lead.created")
async def probe(event: Event, ctx: Context) -> None:
    ctx.log.warning("{version} started %s", event.id)
    while not FLAG.exists():
        await asyncio.sleep(0.05)
    ctx.log.warning("{version} finished %s", event.id)
"""


def test_saves_while_the_worker_stops_let_its_running_handler_finish(clone: Path) -> None:
    """Two saves while a handler runs: one restart (one SIGTERM), the handler finishes, the last save runs."""
    probe = clone / "workers" / "handlers" / "reload_probe.py"
    probe.write_text(SLOW.format(version="v1"), encoding="utf-8")
    run = Run(clone)
    try:
        run.wait_for(r"loaded \d+ handlers from workers\.handlers")
        run.send("s1")
        run.wait_for(r"v1 started s1")
        probe.write_text(SLOW.format(version="v2"), encoding="utf-8")
        run.wait_for(r"restarting the worker")
        run.wait_for(r"running handlers get \d+s to finish")
        probe.write_text(SLOW.format(version="v3"), encoding="utf-8")
        assert _never(lambda: run.text().count("restarting the worker") > 1, for_s=2), run.text()
        (clone / "go").touch()
        run.wait_for(r"v1 finished s1")
        run.send("s2")
        run.wait_for(r"v3 finished s2")
    finally:
        run.stop()
    text = run.text()
    assert text.count("restarting the worker") == 1, text
    assert "v2 started" not in text, "the worker that started after both saves runs the last one"


def test_no_reload_keeps_the_running_worker(clone: Path) -> None:
    """With --no-reload a saved module changes nothing: the next event still runs the code it started with."""
    (clone / "workers" / "handlers" / "reload_probe.py").write_text(
        MODULE.format(version="v1", broken=""), encoding="utf-8"
    )
    run = Run(clone, "--no-reload")
    try:
        run.wait_for(r"loaded \d+ handlers from workers\.handlers")
        run.write("v2")
        assert _never(lambda: "restarting the worker" in run.text(), for_s=3)
        run.send("n1")
        run.wait_for(r"v\d saw n1")
    finally:
        run.stop()
    text = run.text()
    assert "v1 saw n1" in text
    assert "reload off (--no-reload)" in text
    assert run.imports() == ["v1"]


def test_compose_runs_the_commands_that_never_reload() -> None:
    """Compose starts `oa-webhooks api` and `worker` (never `run`, the one command that watches files)."""
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    commands = {
        name: service["command"]
        for name, service in spec["services"].items()
        if str(service.get("command", "")).startswith("oa-webhooks")
    }
    assert set(commands.values()) == {"oa-webhooks api", "oa-webhooks worker"}, commands
    assert 'CMD ["oa-webhooks", "api"]' in (ROOT / "Dockerfile").read_text(encoding="utf-8")
    worker_help = subprocess.run(
        [str(BIN / "oa-webhooks"), "worker", "--help"], capture_output=True, text=True, check=True, timeout=30
    )
    assert "reload" not in worker_help.stdout


def test_a_save_that_leaves_a_file_as_it_was_restarts_nothing(tmp_path: Path) -> None:
    """A file rewritten with the same bytes is not reported; the real change saved beside it is."""
    same, edited = tmp_path / "same.py", tmp_path / "edited.py"
    same.write_text("x = 1\n", encoding="utf-8")
    edited.write_text("y = 1\n", encoding="utf-8")
    watcher = Watcher([tmp_path])
    reports: list[str] = []

    def reported(name: str, *, after: int = 0) -> bool:
        if (changed := watcher.changed()) is not None:
            reports.append(changed)
        return any(name in report for report in reports[after:])

    watcher.start()
    try:
        time.sleep(0.3)  # watchfiles sets its watch up in its thread
        same.write_text("x = 2\n", encoding="utf-8")
        wait_for(lambda: reported("same.py"), timeout_s=10, what="the first save")
        seen = len(reports)
        same.write_text("x = 2\n", encoding="utf-8")  # saved again, unchanged
        edited.write_text("y = 2\n", encoding="utf-8")
        wait_for(lambda: reported("edited.py", after=seen), timeout_s=10, what="the edited file's save")
        # One more real change: once it is reported, every report of the saves before it has been read.
        last = len(reports)
        edited.write_text("y = 3\n", encoding="utf-8")
        wait_for(lambda: reported("edited.py", after=last), timeout_s=10, what="the second edit")
    finally:
        watcher.stop()
    assert not any("same.py" in report for report in reports[seen:]), reports


def test_a_save_reported_mid_write_restarts_the_worker_once(tmp_path: Path) -> None:
    """A report read between a save's truncate and its write, then one of the write: one change, not two."""
    module = tmp_path / "probe.py"
    module.write_text("x = 1\n", encoding="utf-8")
    watcher = Watcher([tmp_path])
    watcher.start()
    try:
        time.sleep(0.3)  # watchfiles sets its watch up in its thread
        module.write_text("", encoding="utf-8")  # the truncate, reported on its own (a busy machine)
        wait_for(lambda: watcher.changed() is not None, timeout_s=10, what="the truncate's report")
        module.write_text("x = 2\n", encoding="utf-8")  # the write, before the restarted worker imports
        watcher.refresh()  # the new worker starts on the whole file
        time.sleep(1)  # the write's own report arrives meanwhile (watchfiles: within ~50 ms)
        assert watcher.changed() is None
        module.write_text("x = 3\n", encoding="utf-8")  # a real change after the start is still one
        wait_for(lambda: watcher.changed() is not None, timeout_s=10, what="the next save's report")
    finally:
        watcher.stop()


def test_a_reload_that_catches_the_failing_code_starting_again_does_not_tell_its_failure_twice(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A broken worker told once, restarted, fails again; a reload stops it then: still told once."""
    failure = "oa-webhooks worker: handler module m could not be imported: RuntimeError: broken"
    fails = [sys.executable, "-c", f"import sys; print({failure!r}); sys.exit(3)"]
    # The backoff's restart: it fails the same way, then the reload's SIGTERM ends it.
    fails_again = [sys.executable, "-c", f"import time; print({failure!r}, flush=True); time.sleep(30)"]
    worker = WorkerSupervisor(fails)
    processes: list[subprocess.Popen[bytes]] = []

    def checked(done: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            worker.check()
            if worker.process is not None and worker.process not in processes:
                processes.append(worker.process)
            return done()

        return check

    try:
        worker.start()
        wait_for(checked(lambda: worker._restart_at is not None), timeout_s=10, what="the failure told")
        worker.command = fails_again
        worker.start()
        wait_for(checked(lambda: bool(worker._held)), timeout_s=10, what="the restart's failure, held")
        worker.reload("m.py changed")
        stopped = worker.process
        wait_for(checked(lambda: worker.process is not stopped), timeout_s=10, what="the reload")
    finally:
        for process in processes:
            process.terminate()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
    err = capfd.readouterr().err
    assert err.count("RuntimeError: broken") == 2, err  # its line, and `run`'s line about it
