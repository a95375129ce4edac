"""A stand-in CRM: records every POST (path and JSON body) as one line of a file, and answers 200.

`make compose-test` runs it inside a network namespace of its own (tests/compose/crm.py), outside
every compose network, so a handler that reaches it proves that handlers have egress.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_LOCK = threading.Lock()


class _Record(BaseHTTPRequestHandler):
    out: Path

    def do_POST(self) -> None:
        """Append {"path", "body"} to the record file, then answer 200 `{}`."""
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        line = json.dumps({"path": self.path, "body": json.loads(body or b"null")})
        with _LOCK, self.out.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet: the record file is the log."""


def main() -> None:
    """`python -m tests.compose.recorder HOST PORT FILE`."""
    host, port, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    handler = type("Record", (_Record,), {"out": out})
    ThreadingHTTPServer((host, port), handler).serve_forever()


if __name__ == "__main__":
    main()
