"""deploy/monitoring: the alert rules are valid and fire as intended, and every metric they use exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tests.processes import ROOT

MONITORING = ROOT / "deploy" / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_alert_rules_are_valid() -> None:
    """`promtool check rules` accepts alerts.yml, and `check config` the Prometheus config."""
    rules = _promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = _promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_alerts_fire_on_their_conditions() -> None:
    """`promtool test rules`: no worker, lag, new dead letters and silence each fire their alert."""
    result = _promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def _metric_names(text: str) -> set[str]:
    names = set(re.findall(r"\boa_webhooks_[a-z_]+", text))
    # Histograms are queried through their _bucket/_count/_sum series.
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


async def test_every_metric_used_by_rules_and_dashboard_is_exposed(admin_client: httpx.AsyncClient) -> None:
    """Each oa_webhooks_* name in alerts.yml and the Grafana dashboard appears in the admin app's /metrics."""
    exposed = _metric_names((await admin_client.get("/metrics")).text)
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "oa-webhooks.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = _metric_names((MONITORING / "alerts.yml").read_text()) | _metric_names(exprs)
    assert used
    assert used <= exposed, used - exposed


def test_compose_has_a_monitoring_profile() -> None:
    """`docker compose --profile monitoring` adds Prometheus and Grafana, wired to our files."""
    services = yaml.safe_load(Path(ROOT / "docker-compose.yml").read_text())["services"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    mounted = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    for path in ("prometheus.yml", "alerts.yml", "grafana/provisioning", "grafana/dashboards"):
        assert f"./deploy/monitoring/{path}" in mounted
        assert (MONITORING / path).exists()
