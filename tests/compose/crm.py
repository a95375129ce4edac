"""A host outside the compose networks: a network namespace with a veth pair and the recorder in it.

Containers reach 10.203.0.2 through Docker's NAT exactly as they would reach a remote CRM; traffic
to the host's own addresses would not prove egress (it is not forwarded). See docker.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.compose.host import sh
from tests.processes import ROOT

NETNS = "oa-compose-crm"
HOST_END, CRM_END = "oa-crm-host", "oa-crm-ns"  # at most 15 characters each
HOST_ADDRESS, CRM_ADDRESS, CRM_PORT = "10.203.0.1", "10.203.0.2", 8080
URL = f"http://{CRM_ADDRESS}:{CRM_PORT}"


class Crm:
    """The namespace, its link to the host, and the recorder; `records()` is what it received."""

    def __init__(self, work: Path) -> None:
        self.out = work / "crm-records.jsonl"
        self.server: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Make the namespace and link, start the recorder, and wait until the host reaches it."""
        self.remove_leftovers()
        sh("ip", "netns", "add", NETNS)
        sh("ip", "link", "add", HOST_END, "type", "veth", "peer", "name", CRM_END)
        sh("ip", "link", "set", CRM_END, "netns", NETNS)
        sh("ip", "addr", "add", f"{HOST_ADDRESS}/24", "dev", HOST_END)
        sh("ip", "link", "set", HOST_END, "up")
        sh("ip", "-n", NETNS, "addr", "add", f"{CRM_ADDRESS}/24", "dev", CRM_END)
        sh("ip", "-n", NETNS, "link", "set", CRM_END, "up")
        sh("ip", "-n", NETNS, "link", "set", "lo", "up")
        sh("ip", "-n", NETNS, "route", "add", "default", "via", HOST_ADDRESS)
        self.out.touch()
        argv = ["ip", "netns", "exec", NETNS, sys.executable, "-m", "tests.compose.recorder"]
        self.server = subprocess.Popen([*argv, CRM_ADDRESS, str(CRM_PORT), str(self.out)], cwd=ROOT)
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.post(URL + "/ping", json={}, timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.server.poll() is not None:
                    raise SystemExit("compose-test: the CRM in its namespace did not answer") from None
                time.sleep(0.1)

    def records(self, path: str) -> list[dict[str, Any]]:
        """The JSON bodies POSTed to `path`, in order of arrival."""
        lines = self.out.read_text(encoding="utf-8").splitlines()
        return [entry["body"] for entry in map(json.loads, lines) if entry["path"] == path]

    def ids(self, path: str) -> set[str]:
        """The event ids POSTed to `path`."""
        return {body["id"] for body in self.records(path)}

    def stop(self) -> None:
        """Stop the recorder and remove the namespace and the link."""
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(timeout=10)
        self.remove_leftovers()

    @staticmethod
    def remove_leftovers() -> None:
        """Delete the namespace (which deletes the veth pair) and the host end, if a run left them."""
        sh("ip", "netns", "del", NETNS, check=False, quiet=True)
        sh("ip", "link", "del", HOST_END, check=False, quiet=True)
