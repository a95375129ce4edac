"""`make compose-test`: run docker-compose.yml as a user does, with real signed requests from the host.

One function per step, each timed. It installs what is missing (tests/compose/host.py), builds
stand-ins for the base images instead of pulling (nothing is ever pulled: `--pull never`), and puts
a stand-in CRM in a network namespace outside the compose networks (tests/compose/crm.py). At the
end it removes what it made: containers, networks, the Redis volume, the namespace, its handler
modules, and the `.env` it wrote (a `.env` that was there before is put back). Run as root.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from service.api.signature import SIGNATURE_HEADER, sign
from service.ops.cli.sender import SAMPLES, sample_body
from tests.compose import host
from tests.compose.crm import CRM_ADDRESS, CRM_PORT, URL, Crm
from tests.processes import BIN, HANDLERS_DIR, ROOT

if TYPE_CHECKING:
    from collections.abc import Callable

PUBLIC, ADMIN = "http://127.0.0.1:8000", "http://127.0.0.1:8001"
PUBLIC_HA, ADMIN_HA = "http://127.0.0.1:8010", "http://127.0.0.1:8011"  # the `ha` profile's api-ha
HA_NODES = ("redis-primary", "redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3")
NO_PULL = ["--pull", "never"]  # no image registry is reachable, and none may be tried
EVENT_TYPES = list(SAMPLES)  # every documented type
HANDLER_TEMPLATE = '''"""compose-test: tell the CRM outside the stack about every event (removed after)."""

from workers import Context, Event, on


@on("*")
async def {name}(event: Event, ctx: Context) -> None:
    """POST the event's id and type to the CRM; a failure retries."""
    response = await ctx.http.post("{url}", json={{"id": event.id, "type": event.type}})
    response.raise_for_status()
'''


@dataclass
class Run:
    """What the steps share: the work folder, the CRM, the secret, and what to clean up."""

    work: Path
    crm: Crm
    secret: str = field(default_factory=lambda: secrets.token_hex(24))
    handler_files: list[Path] = field(default_factory=list)
    saved_env: Path | None = None
    daemon: subprocess.Popen[bytes] | None = None

    def compose(self, *args: str, check: bool = True) -> str:
        """`docker compose ARGS` in the checkout, as a user types it."""
        return host.sh("docker", "compose", *args, check=check, cwd=ROOT)

    def post(self, event_type: str, event_id: str, *, base: str = PUBLIC) -> httpx.Response:
        """A signed event of `event_type`, sent to the published webhook port (`base`)."""
        body = sample_body(event_type, event_id=event_id)
        headers = {"content-type": "application/json", SIGNATURE_HEADER: sign(body, self.secret.encode())}
        return httpx.post(base + "/webhooks/offerte-adviseur", content=body, headers=headers, timeout=10)

    def add_handler(self, name: str, path: str) -> None:
        """Write a handler module into workers/handlers/ that POSTs every event to the CRM's `path`."""
        module = HANDLERS_DIR / f"{name}.py"
        module.write_text(HANDLER_TEMPLATE.format(name=name, url=URL + path), encoding="utf-8")
        self.handler_files.append(module)

    def wait_handled(self, ids: set[str], path: str = "/egress", *, timeout_s: float = 60) -> None:
        """Wait until the CRM has received every id in `ids` on `path`."""
        wait_for(lambda: ids <= self.crm.ids(path), timeout_s=timeout_s, what=f"{len(ids)} events at {path}")


def wait_for(predicate: Callable[[], object], *, timeout_s: float, what: str) -> None:
    """Poll `predicate` every half second until it is truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.5)


def readme_handler_command() -> list[str]:
    """The command that README's "Add a handler" gives for compose: the first line of its `sh` block."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Add a handler") : readme.index("## Running it")]
    block = re.search(r"```sh\n(docker compose [^\n#]+)", section)
    assert block, "README's 'Add a handler' has no ```sh block with a docker compose command"
    return shlex.split(block.group(1))


# The steps, in order. Each one's docstring is its name in the timing table.


def prepare(run: Run) -> None:
    """Tools, engine, stand-in base images, CRM namespace."""
    if os.geteuid() != 0:
        raise SystemExit("compose-test: run it as root (it installs packages, runs dockerd and ip netns)")
    host.ensure_tools()
    run.daemon = host.ensure_dockerd(run.work)
    print("  base images: " + host.ensure_standins())
    run.crm.start()


def step_1_up(run: Run) -> None:
    """1. cp .env.example .env, set the secrets, up -d --build --wait."""
    env = ROOT / ".env"
    if env.exists():
        run.saved_env = run.work / "saved.env"
        shutil.copy2(env, run.saved_env)
    shutil.copy2(ROOT / ".env.example", env)
    text = env.read_text(encoding="utf-8")
    text = text.replace("OA_WEBHOOK_SECRET=change-me", f"OA_WEBHOOK_SECRET={run.secret}")
    text = text.replace("REDIS_PASSWORD=change-me-too", f"REDIS_PASSWORD={secrets.token_hex(16)}")
    # The monitoring profile needs it (step 9), and so does a `down` that names the profile (clean_up).
    text = text.replace("GRAFANA_ADMIN_PASSWORD=\n", f"GRAFANA_ADMIN_PASSWORD={secrets.token_hex(16)}\n")
    env.write_text(text, encoding="utf-8")
    run.add_handler("compose_test_egress", "/egress")
    run.compose("up", "-d", "--build", "--wait", *NO_PULL)


def step_2_every_type(run: Run) -> None:
    """2. oa-webhooks send, every documented type: 202, and handled."""
    ids = {f"s2-{event_type}": event_type for event_type in EVENT_TYPES}
    # As README's "Running it" shows: `oa-webhooks send` from the host, with the secret from .env.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OA_") and k != "REDIS_URL"}
    for event_id, event_type in ids.items():
        said = host.sh(
            BIN / "oa-webhooks", "send", event_type, "--id", event_id, cwd=ROOT, env=env, quiet=True
        )
        assert said.startswith("202 "), (event_type, said)
    run.wait_handled(set(ids))
    assert {body["id"]: body["type"] for body in run.crm.records("/egress")} == ids
    # The shipped example handlers (leads.py, invoices.py) ran for each type too.
    wait_for(
        lambda: all(f"example handler saw {t}" in run.compose("logs", "worker") for t in EVENT_TYPES),
        timeout_s=20,
        what="the example handlers' log lines",
    )


def step_3_egress(run: Run) -> None:
    """3. handlers reach a host outside the stack; Redis cannot."""
    assert len(run.crm.records("/egress")) >= len(EVENT_TYPES)  # step 2's events came from the worker
    # redis-cli is in every redis image: from Redis's container the CRM must not even connect.
    probe = f"timeout 5 redis-cli -h {CRM_ADDRESS} -p {CRM_PORT} ping; echo exit=$?"
    said = run.compose("exec", "-T", "redis", "sh", "-c", probe)
    assert "exit=124" in said or "Could not connect" in said, said


def step_4_admin_port(run: Run) -> None:
    """4. /metrics: 404 on the published port, 200 on the admin port (host loopback and api:8001)."""
    public = httpx.get(PUBLIC + "/metrics", timeout=10)
    assert (public.status_code, public.json()["error"]) == (404, "not_found")
    assert httpx.get(PUBLIC + "/readyz", timeout=10).status_code == 404
    admin = httpx.get(ADMIN + "/metrics", timeout=10)
    assert admin.status_code == 200
    assert 'oa_webhooks_events_received_total{type="lead.paid"}' in admin.text
    assert httpx.get(ADMIN + "/readyz", timeout=10).status_code == 200
    assert run.compose("port", "api", "8001").strip() == "127.0.0.1:8001"
    # Where Prometheus scrapes it, inside the stack's network.
    scrape = "import urllib.request as u; print(u.urlopen('http://api:8001/metrics').status)"
    assert run.compose("exec", "-T", "worker", "python", "-c", scrape).strip() == "200"


def step_5_new_handler(run: Run) -> None:
    """5. a second handler module, the README's command, and it runs."""
    run.add_handler("compose_test_second", "/second")
    command = readme_handler_command()
    print(f"  README's command: {shlex.join(command)} (here with --pull never)")
    host.sh(*command, *NO_PULL, cwd=ROOT)
    assert run.post("lead.paid", "s5-second").status_code == 202
    run.wait_handled({"s5-second"}, "/second")
    run.wait_handled({"s5-second"}, "/egress")


def step_6_scale(run: Run) -> None:
    """6. --scale worker=3: status --json shows 3 live workers."""
    run.compose("up", "-d", "--wait", "--scale", "worker=3", *NO_PULL)

    def workers() -> int:
        out = run.compose("exec", "-T", "api", "oa-webhooks", "status", "--json", check=False)
        return len(json.loads(out)["workers"]) if out.startswith("{") else -1

    wait_for(lambda: workers() == 3, timeout_s=60, what="3 live workers in status --json")


@dataclass
class _Sent:
    event_id: str
    status: int
    started: float
    ended: float
    retry_after: str | None


def _send_until(run: Run, stop: threading.Event, sent: list[_Sent], prefix: str) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        event_id, started = f"{prefix}-{number}", time.monotonic()
        try:
            response = run.post(EVENT_TYPES[number % len(EVENT_TYPES)], event_id)
        except httpx.HTTPError:  # the API must stay up: recorded as status 0, which fails the step
            sent.append(_Sent(event_id, 0, started, time.monotonic(), None))
            continue
        retry_after = response.headers.get("retry-after")
        sent.append(_Sent(event_id, response.status_code, started, time.monotonic(), retry_after))
        time.sleep(0.02)


def step_7_redis_killed(run: Run) -> None:
    """7. SIGKILL Redis while events arrive: 503s, never 2xx; back up: every acknowledged event handled."""
    sent: list[_Sent] = []
    stop = threading.Event()
    sender = threading.Thread(target=_send_until, args=(run, stop, sent, "s7"), daemon=True)
    sender.start()
    time.sleep(2)
    run.compose("kill", "-s", "SIGKILL", "redis")
    killed = time.monotonic()
    time.sleep(4)
    back = time.monotonic()
    run.compose("up", "-d", "--wait", "redis", *NO_PULL)
    time.sleep(3)
    stop.set()
    sender.join(timeout=30)
    statuses = {s.status for s in sent}
    assert statuses <= {202, 503}, statuses
    down = [s for s in sent if s.started > killed and s.ended < back]
    assert down, "no request was answered while Redis was down"
    assert all(s.status == 503 and s.retry_after for s in down), [(s.event_id, s.status) for s in down]
    acknowledged = {s.event_id for s in sent if s.status == 202}
    assert any(s.status == 202 and s.started > back for s in sent), (
        "nothing was accepted after Redis came back"
    )
    print(
        f"  {len(sent)} sent: {len(acknowledged)} acknowledged, {len(sent) - len(acknowledged)} answered 503"
    )
    # A job claimed at the kill runs again once its claim expires (OA_JOB_TIMEOUT_S + 15 s at most).
    run.wait_handled(acknowledged, timeout_s=120)


def step_8_down_and_up(run: Run) -> None:
    """8. workers stopped, events queued, down (volume kept), up: all handled."""
    run.compose("stop", "worker")
    ids = {f"s8-{number}" for number in range(20)}
    for event_id in sorted(ids):
        assert run.post("invoice.paid", event_id).status_code == 202
    assert not ids & run.crm.ids("/egress")
    run.compose("down")
    run.compose("up", "-d", "--wait", *NO_PULL)
    run.wait_handled(ids)


def step_9_monitoring_profile(run: Run) -> None:
    """9. the monitoring profile: valid with GRAFANA_ADMIN_PASSWORD, refused without; all on loopback."""
    services = json.loads(run.compose("--profile", "monitoring", "config", "--format", "json"))["services"]
    for name in ("prometheus", "grafana"):
        hosts = {p.get("host_ip", "") for p in services[name]["ports"]}
        assert hosts == {"127.0.0.1"}, f"{name} must be published on the host's loopback only: {hosts}"
    # An empty value in the environment wins over .env's: compose must refuse, naming the variable,
    # for the profile only.
    unset = {**os.environ, "GRAFANA_ADMIN_PASSWORD": ""}
    refused = subprocess.run(
        ["docker", "compose", "--profile", "monitoring", "config", "-q"],
        cwd=ROOT,
        env=unset,
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0, "the monitoring profile started without GRAFANA_ADMIN_PASSWORD"
    assert "GRAFANA_ADMIN_PASSWORD" in refused.stderr, refused.stderr
    host.sh("docker", "compose", "config", "-q", cwd=ROOT, env=unset)  # without the profile: not needed
    assert "api:8001" in (ROOT / "deploy/monitoring/prometheus.yml").read_text(encoding="utf-8")


def step_10_ha_profile(run: Run) -> None:
    """10. the ha profile: valid, Redis private; up, an event to api-ha handled via Sentinel, removed."""
    run.compose("--profile", "ha", "config", "-q")
    services = json.loads(run.compose("--profile", "ha", "config", "--format", "json"))["services"]
    for name in HA_NODES:
        assert list(services[name]["networks"]) == ["internal"], f"{name} must be on `internal` only"
        assert not services[name].get("ports"), f"{name} must publish no port"
    published = {(p.get("host_ip", ""), p["published"]) for p in services["api-ha"]["ports"]}
    assert published == {("", "8010"), ("127.0.0.1", "8011")}, published
    run.compose("--profile", "ha", "up", "-d", "--wait", *NO_PULL, "api-ha", "worker-ha")
    assert httpx.get(ADMIN_HA + "/readyz", timeout=5).status_code == 200
    ids = {"s10-ha"}
    assert run.post("lead.paid", "s10-ha", base=PUBLIC_HA).status_code == 202
    run.wait_handled(ids)
    run.compose("--profile", "ha", "rm", "--stop", "--force", "-v", "api-ha", "worker-ha", *HA_NODES)


def clean_up(run: Run) -> None:
    """Clean up: containers, networks, volume, namespace, handler modules, .env, dockerd."""
    if shutil.which("docker") and (run.daemon is None or run.daemon.poll() is None):
        profiles = ["--profile", "monitoring", "--profile", "ha"]
        run.compose(*profiles, "down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)
        # Images that a rebuild untagged (ours carry this label); the current image stays cached.
        label = "label=org.opencontainers.image.title=oa-webhooks"
        host.sh("docker", "image", "prune", "--force", "--filter", label, check=False)
    run.crm.stop()
    for module in run.handler_files:
        module.unlink(missing_ok=True)
    env = ROOT / ".env"
    if run.saved_env is not None:
        shutil.copy2(run.saved_env, env)
    else:
        env.unlink(missing_ok=True)
    if run.daemon is not None:
        run.daemon.terminate()
        run.daemon.wait(timeout=60)


STEPS = [
    prepare,
    step_1_up,
    step_2_every_type,
    step_3_egress,
    step_4_admin_port,
    step_5_new_handler,
    step_6_scale,
    step_7_redis_killed,
    step_8_down_and_up,
    step_9_monitoring_profile,
    step_10_ha_profile,
]


def _timed(step: Callable[[Run], None], run: Run, times: list[tuple[str, float]]) -> None:
    name = (step.__doc__ or step.__name__).splitlines()[0]
    print(f"== {name}", flush=True)
    started = time.monotonic()
    try:
        step(run)
    finally:
        times.append((name, time.monotonic() - started))
        print(f"   {times[-1][1]:.1f} s", flush=True)


def main() -> None:
    """Run every step in order, always clean up, and print each step's time."""
    work = Path(tempfile.mkdtemp(prefix="oa-compose-test-"))
    run = Run(work=work, crm=Crm(work))
    times: list[tuple[str, float]] = []
    failed: BaseException | None = None
    try:
        for step in STEPS:
            _timed(step, run, times)
    except BaseException as exc:
        failed = exc
        if shutil.which("docker"):
            print(run.compose("logs", "--no-color", "--tail", "60", check=False)[-6000:])
    finally:
        _timed(clean_up, run, times)
    print("\ncompose-test step times:")
    for name, seconds in times:
        print(f"  {seconds:7.1f} s  {name}")
    print(f"  {sum(s for _, s in times):7.1f} s  total")
    if failed is not None:
        print(f"compose-test: FAILED; the CRM's records and dockerd's log are in {work}")
        raise failed
    shutil.rmtree(work, ignore_errors=True)
    print("compose-test: PASS")


if __name__ == "__main__":
    main()
