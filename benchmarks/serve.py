"""Serve A (`raw`) or B (`naive`) through `oa-webhooks api` itself, with only the application swapped.

`oa-webhooks api` chooses every uvicorn setting (HTTP protocol, limits, timeouts, logging; today in
service/server.py). Wrapping `uvicorn.run` keeps each of them, whatever the command passes, and
replaces the app alone: A, B and C then differ in nothing else. (The bench checks which app answers.)
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import uvicorn

from service import cli

APPS = {"raw": "benchmarks.raw_app", "naive": "benchmarks.naive_app"}


def main() -> None:
    """`python -m benchmarks.serve raw|naive`, with the environment `oa-webhooks api` would get."""
    other_app = importlib.import_module(APPS[sys.argv[1]]).app
    real_run = uvicorn.run

    def run_other_app(_ours: Any, **settings: Any) -> None:
        real_run(other_app, **settings)

    uvicorn.run = run_other_app  # type: ignore[assignment]
    cli.api()


if __name__ == "__main__":
    main()
