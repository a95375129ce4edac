"""The console's session cookie and CSRF tokens: HMACs keyed by `OA_ADMIN_TOKEN`.

A session cookie is `<expiry>.<nonce>.<mac>`: the expiry (Unix seconds) and a random nonce, with an
HMAC-SHA256 of both under a key derived from the token. So it cannot be forged or extended without
the token, and changing the token ends every session. The nonce is also the session's id in Redis
(service/store/sessions.py): a genuine cookie opens the console only while its session is live there,
so signing out (or `oa-webhooks console sign-out-all`) ends it for every copy of the cookie. The CSRF
token of a session is the HMAC of its nonce under the same key: each form carries it, and a POST
must send it back.

The standard library's `hmac` does all of it in a few lines; itsdangerous would sign the same way
and add a dependency to the image for it. Every comparison is `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.requests import Request

COOKIE = "oa_console"
SESSION_TTL_S = 12 * 3600
CSRF_FIELD = "csrf"


@dataclass(frozen=True, slots=True)
class Session:
    """A valid session: its nonce (what its CSRF token is made from) and when it ends."""

    nonce: str
    expires_s: int


def _key(token: bytes) -> bytes:
    # Derived, so that the token itself never keys anything a browser sees.
    return hmac.new(token, b"oa-webhooks console v1", hashlib.sha256).digest()


def _mac(token: bytes, message: str) -> str:
    return hmac.new(_key(token), message.encode(), hashlib.sha256).hexdigest()


def token_matches(given: str, token: bytes) -> bool:
    """True when `given` is the token; compares digests, so neither content nor length leaks."""
    given_digest = hashlib.sha256(given.encode()).digest()
    return hmac.compare_digest(given_digest, hashlib.sha256(token).digest())


def new_session(token: bytes, *, now_s: float | None = None) -> str:
    """A fresh cookie value, valid for `SESSION_TTL_S`."""
    expires = int(time.time() if now_s is None else now_s) + SESSION_TTL_S
    payload = f"{expires}.{secrets.token_urlsafe(18)}"
    return f"{payload}.{_mac(token, 'session.' + payload)}"


def parse_session(value: str, token: bytes, *, now_s: float | None = None) -> Session | None:
    """The session a cookie value stands for, or None if it is forged, altered or expired."""
    expires, _, rest = value.partition(".")
    nonce, _, mac = rest.partition(".")
    if not (expires.isdigit() and nonce and mac):
        return None
    if not hmac.compare_digest(mac, _mac(token, f"session.{expires}.{nonce}")):
        return None
    if int(expires) <= (time.time() if now_s is None else now_s):
        return None
    return Session(nonce, int(expires))


def session_of(request: Request, token: bytes) -> Session | None:
    """The request's valid session, if its cookie holds one."""
    value = request.cookies.get(COOKIE)
    return None if value is None else parse_session(value, token)


def csrf_token(session: Session, token: bytes) -> str:
    """The token that the session's forms carry."""
    return _mac(token, "csrf." + session.nonce)


def csrf_matches(given: str | None, session: Session, token: bytes) -> bool:
    """True when a POST sent back its session's CSRF token (compared in constant time)."""
    return given is not None and hmac.compare_digest(given.encode(), csrf_token(session, token).encode())
