"""The signature: the provider's own PHP vectors, and the properties of `sign`/`verify`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.api.signature import SignatureFailure, Verified, sign, verify

# A copy of shared/testdata/signature-vectors.jsonl (made with PHP's hash_hmac), so a clone
# of this repository alone can run the tests.
VECTORS_FILE = Path(__file__).parent / "data" / "signature-vectors.jsonl"
SHARED_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "signature-vectors.jsonl"
VECTORS = [json.loads(line) for line in VECTORS_FILE.read_text(encoding="utf-8").splitlines() if line]


@pytest.mark.skipif(not SHARED_VECTORS.exists(), reason="no shared/testdata beside this checkout")
def test_vector_copy_matches_shared_testdata() -> None:
    """Our copy of the vectors is byte-for-byte the shared original."""
    assert VECTORS_FILE.read_bytes() == SHARED_VECTORS.read_bytes()


@pytest.mark.parametrize("vector", VECTORS, ids=[f"vector{i + 1}" for i in range(len(VECTORS))])
def test_provider_vectors_verify(vector: dict[str, str]) -> None:
    """Each vector computed by PHP's hash_hmac verifies against its exact UTF-8 bytes."""
    body = vector["body"].encode()
    assert sign(body, vector["secret"].encode()) == vector["signature"]
    assert verify(body, [vector["signature"].encode()], (vector["secret"].encode(),)) == Verified(0)


@pytest.mark.parametrize("vector", VECTORS, ids=[f"vector{i + 1}" for i in range(len(VECTORS))])
def test_provider_vectors_reject_any_changed_byte(vector: dict[str, str]) -> None:
    """Changing any single byte of the body makes each vector fail."""
    body = bytearray(vector["body"].encode())
    secrets = (vector["secret"].encode(),)
    for index in range(len(body)):
        changed = bytearray(body)
        changed[index] ^= 0x01
        assert verify(bytes(changed), [vector["signature"].encode()], secrets) is SignatureFailure.MISMATCH


def test_uppercase_hex_is_accepted() -> None:
    """Either case of hex digits verifies."""
    body = b'{"id":"a"}'
    assert verify(body, [sign(body, b"k").upper().encode()], (b"k",)) == Verified(0)


def test_rotation_reports_which_secret_matched() -> None:
    """With several secrets, any one verifies, and the result names its position."""
    body = b"{}"
    secrets = (b"old-secret-value-1", b"new-secret-value-2")
    assert verify(body, [sign(body, secrets[1]).encode()], secrets) == Verified(1)
    assert verify(body, [sign(body, secrets[0]).encode()], secrets) == Verified(0)


@pytest.mark.parametrize(
    ("given", "failure"),
    [
        ([], SignatureFailure.MISSING),
        ([b""], SignatureFailure.MISSING),
        ([b"ab" * 32, b"cd" * 32], SignatureFailure.MULTIPLE),
        ([b"abc"], SignatureFailure.MALFORMED),
        ([b"zz" * 32], SignatureFailure.MALFORMED),
        (["é".encode() * 32], SignatureFailure.MALFORMED),
        ([b"sha256=" + b"ab" * 32], SignatureFailure.MALFORMED),
        ([b"ab" * 32], SignatureFailure.MISMATCH),
    ],
)
def test_bad_signatures_are_named(given: list[bytes], failure: SignatureFailure) -> None:
    """Every malformed or wrong header maps to a named failure, never an exception."""
    assert verify(b"{}", given, (b"secret",)) is failure
