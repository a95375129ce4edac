"""Serve A (`raw`) or B (`naive`) through `oa-webhooks api` itself, with only the application swapped.

`oa-webhooks api` chooses every uvicorn setting (HTTP protocol, limits, timeouts, logging; today in
service/api/listeners.py and service/api/server.py). Swapping the public app's factory there keeps each of
them, whatever the command passes, and replaces the app alone: A, B and C then differ in nothing
else (the admin listener runs beside each, as in production). The bench checks which app answers.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from service.api import listeners
from service.ops import cli

APPS = {"raw": "benchmarks.raw_app", "naive": "benchmarks.naive_app"}


def main() -> None:
    """`python -m benchmarks.serve raw|naive`, with the environment `oa-webhooks api` would get."""
    other_app = importlib.import_module(APPS[sys.argv[1]]).app

    def other_app_instead(*_args: Any, **_kwargs: Any) -> Any:
        return other_app

    listeners.create_app = other_app_instead
    cli.api()


if __name__ == "__main__":
    main()
