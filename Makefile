# The one entry point: make run | test | lint | fuzz | bench | audit | lock | compose-test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint format clean

## make install: the exact versions of the locks (as the Docker image), never a fresh resolution:
## requirements-dev.lock (the runtime pins of requirements.lock plus the dev tools), each with its
## hashes, and the build backend of requirements-build.lock; then our project, editable, with nothing
## resolved. `make lock` refreshes the locks.
$(STAMP): pyproject.toml requirements-dev.lock requirements-build.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock -r requirements-build.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

## make run: Redis (REDIS_URL, or a local redis-server), the API on :8000 and one worker. Ctrl-C stops all.
run: $(STAMP)
	$(BIN)/oa-webhooks run

## make test: lint, then every test (unit, in-process, end-to-end with real processes), your handlers'
## tests in tests/handlers/ too. `make test TESTS=tests/handlers` runs only those, in seconds.
TESTS ?=
test: lint
	$(BIN)/pytest $(TESTS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

.PHONY: fuzz audit

## make fuzz: fuzz the verify-and-parse path for 50 seconds, then stop (make test runs a 3-second smoke).
fuzz: $(STAMP)
	OA_FUZZ_SECONDS=50 $(BIN)/pytest -q -s -p no:cacheprovider tests/test_fuzz.py

## make audit: check the installed dependencies for known vulnerabilities with pip-audit (in its own venv).
## Offline, or when the database knows none of our packages, it says that nothing was checked and exits 0.
AUDIT_VENV := $(VENV)/.audit
audit: $(STAMP)
	@if [ ! -x $(AUDIT_VENV)/bin/pip-audit ]; then \
	  { $(PYTHON) -m venv $(AUDIT_VENV) && $(AUDIT_VENV)/bin/pip install --quiet 'pip-audit>=2.7,<3'; } \
	  || { echo "make audit: could not install pip-audit (offline?): nothing was checked"; rm -rf $(AUDIT_VENV); exit 0; }; fi
	@rm -f $(AUDIT_VENV)/report.json; \
	$(AUDIT_VENV)/bin/pip-audit --path "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
	  --skip-editable --progress-spinner off --timeout 15 --format json --output $(AUDIT_VENV)/report.json \
	  2> $(AUDIT_VENV)/stderr.txt; \
	$(BIN)/python -c "$$AUDIT_SUMMARY" $$? $(AUDIT_VENV)

define AUDIT_SUMMARY
import json, pathlib, re, sys
status, folder = int(sys.argv[1]), pathlib.Path(sys.argv[2])
report, errors = folder / "report.json", (folder / "stderr.txt").read_text(errors="replace")
offline = re.search(r"ConnectionError|Max retries|name resolution|timed out|unreachable|SSLError", errors)
if not report.exists() or not report.read_text().strip():
    if offline:
        sys.exit(print("make audit: the vulnerability database could not be reached (offline?): nothing was checked"))
    sys.exit(print(errors[-3000:], file=sys.stderr) or status or 1)
deps = json.loads(report.read_text())["dependencies"]
audited = [d for d in deps if "skip_reason" not in d]
if not audited:
    sys.exit(print(f"make audit: the vulnerability database knows none of the {len(deps)} installed packages "
                   "(offline or a mirror without it?): nothing was checked"))
found = [d for d in audited if d["vulns"]]
for d in found:
    fixes = sorted({v for x in d["vulns"] for v in x["fix_versions"]})
    print(f"{d['name']} {d['version']}: {', '.join(x['id'] for x in d['vulns'])} (fixed in: {', '.join(fixes) or '-'})")
print(f"make audit: {len(found)} vulnerable of {len(audited)} audited packages ({len(deps) - len(audited)} skipped)")
sys.exit(1 if found else 0)
endef
export AUDIT_SUMMARY

## make bench: throughput, latency, zero loss and memory of ingest and worker (issue 6), the pinned
## variant and CPU per event (issue 23); about 5 min.
## Starts its own durable redis-server, the servers and workers, and wrk (Debian's, installed if
## missing); prints PASS/FAIL per target and writes bench-results.json.
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

## make lock: refresh requirements.lock (runtime), requirements-dev.lock (the same runtime pins plus
## the dev extras, for make install) and requirements-build.lock (the build backend) from
## pyproject.toml, every pin with its hashes, with uv (installed into its own venv). The Docker image
## and make install install exactly these; tests/test_lock.py fails when they no longer satisfy
## pyproject.toml or each other.
.PHONY: lock
LOCK_VENV := $(VENV)/.lock
UV := $(LOCK_VENV)/bin/uv
UV_COMPILE := UV_CUSTOM_COMPILE_COMMAND="make lock" $(UV) pip compile --universal --python-version 3.11 \
	--generate-hashes --quiet
lock: $(STAMP)
	@[ -x $(UV) ] || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet 'uv>=0.9,<1'; }
	$(UV_COMPILE) --upgrade -o requirements.lock pyproject.toml
	$(UV_COMPILE) --upgrade --extra dev -c requirements.lock -o requirements-dev.lock pyproject.toml
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(UV_COMPILE) --upgrade -o requirements-build.lock -

## make compose-test: docker compose up as a user runs it, against stand-in base images built from
## Debian packages (nothing is pulled), with signed events from the host; cleans up after itself.
## Installs the engine, Compose v2 and debootstrap when missing and starts dockerd. Root only; < 10 min.
.PHONY: compose-test
compose-test: $(STAMP)
	$(BIN)/python -m tests.compose.run

## make bench-outage: a 30 s CRM outage with 40 events and two workers, with the circuit breaker off and
## on (issue 20): calls into the dead CRM, dead letters, and the drain after it is back. About 2 minutes.
.PHONY: bench-outage
bench-outage: $(STAMP)
	$(BIN)/python -m benchmarks.outage

## make bench-instructions: the API's instructions per request under valgrind's callgrind (issue 23), a
## figure that the machine's load does not move: compare two versions of the code with it. Then the same
## with tracing on, exporting to a sink: every request sampled, then 1 in 10 (issue 22). About 6 minutes.
.PHONY: bench-instructions
bench-instructions: $(STAMP)
	$(BIN)/python -m benchmarks.instructions --tracing --sampled

## make bench-failover: a primary SIGKILLed under ~200 events/s, with Sentinel, 3 times with
## OA_REDIS_MIN_REPLICAS=0 and 3 times with =1 (issue 16): lost and duplicated acknowledged events, and
## the time until ingest answers 202 again. About 2 minutes; writes bench-failover.json.
.PHONY: bench-failover
bench-failover: $(STAMP)
	$(BIN)/python -m benchmarks.failover
