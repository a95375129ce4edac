"""A time-boxed fuzz run of the verify-and-parse path, as the endpoint and then the worker run it.

`make test` runs it for OA_FUZZ_SECONDS (default 3) as a smoke; `make fuzz` for 50 seconds. Hypothesis
generates bodies and signature headers in batches until the time is up, and shrinks any failure; the
failing example is kept in `.hypothesis/` and replayed first on the next run.
"""

from __future__ import annotations

import os
import time
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.envelope import Envelope, parse_envelope
from service.api.ingest import Rejected, parse_body
from service.api.signature import SignatureFailure, Verified, sign, verify
from tests import test_properties as props
from workers.events import build_event

FUZZ_SECONDS = float(os.environ.get("OA_FUZZ_SECONDS", "3"))
BATCH = 300
ROTATION = (b"old-secret-0123456789abcdef", b"whsec_test_secret_0123456789")
DECLARED = {(400, "invalid_json"), (422, "invalid_envelope")}
outcomes: Counter[str] = Counter()


@st.composite
def signature_headers(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """Mostly one header value (right, right but reformatted, wrong, or garbage); sometimes none or two."""
    right = sign(body, draw(st.sampled_from(ROTATION))).encode()
    good = st.sampled_from([right, right.upper(), b" " + right + b"\t"])
    altered = right[:-1] + (b"1" if right.endswith(b"0") else b"0")  # differs, whatever right ends in
    bad = st.sampled_from([b"sha256=" + right, right[:-1], altered]) | st.binary(max_size=80)
    return draw(
        st.lists(good, min_size=1, max_size=1)
        | st.lists(good | bad, min_size=1, max_size=1)
        | st.lists(good | bad, max_size=2)
    )


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A body (random, envelope-like or mutated) and the signature header values sent with it."""
    body = draw(props.any_body)
    return body, draw(signature_headers(body))


def _expected_secret(body: bytes, headers: list[bytes]) -> int | None:
    if len(headers) != 1:
        return None
    given_hex = headers[0].strip(b" \t").lower()
    matches = [i for i, secret in enumerate(ROTATION) if sign(body, secret).encode() == given_hex]
    return matches[0] if matches else None


def _parse_as_the_endpoint(body: bytes) -> Envelope | Rejected:
    try:
        return parse_body(body)
    except Rejected as exc:
        return exc


def check_request(body: bytes, headers: list[bytes]) -> str:
    """Verify, then parse, as the endpoint does; then parse and build the event as the worker does."""
    result = verify(body, headers, ROTATION)
    expected = _expected_secret(body, headers)
    if isinstance(result, SignatureFailure):
        assert expected is None, f"a correct signature was refused: {result}"
        return result.value
    assert result == Verified(expected), "a signature verified that is not the body's"
    envelope = _parse_as_the_endpoint(body)
    if isinstance(envelope, Rejected):
        assert (envelope.status, envelope.code) in DECLARED
        return envelope.code
    worker_view = props.at_stack_depth(400, lambda: parse_envelope(body))
    assert worker_view == envelope
    assert isinstance(envelope, Envelope)
    if build_event(envelope, received_ms=0).mismatched_fields:
        return "accepted, payload does not fit its model (handlers get the plain Payload)"
    return "accepted"


@settings(
    max_examples=BATCH,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests())
def _fuzz_batch(request: tuple[bytes, list[bytes]]) -> None:
    outcomes[check_request(*request)] += 1


def test_fuzz_verify_and_parse_for_the_time_budget() -> None:
    """For OA_FUZZ_SECONDS: only true signatures verify, and bodies then parse or are refused cleanly."""
    outcomes.clear()
    started = time.monotonic()
    batches = 0
    while batches == 0 or time.monotonic() - started < FUZZ_SECONDS:
        _fuzz_batch()
        batches += 1
    elapsed = time.monotonic() - started
    total = sum(outcomes.values())
    print(f"\nfuzz: {total} requests in {elapsed:.1f}s ({batches} batches)")  # shown by `make fuzz`
    for outcome, count in outcomes.most_common():
        print(f"  {count:7d}  {outcome}")
    assert total >= BATCH
    assert outcomes["accepted"] > 0, "the generator never produced an acceptable request"
