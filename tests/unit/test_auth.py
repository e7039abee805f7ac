"""Bearer tokens and signed requests (DESIGN 7)."""

from __future__ import annotations

import hashlib

import pytest

from app.auth import (
    ReplayCache,
    RequestVerifier,
    make_token,
    now_ms,
    parse_signature_header,
    sign_request,
    verify_token,
)
from app.errors import Unauthorized

SECRET = b"k" * 40
OTHER = b"o" * 40


def test_token_round_trip() -> None:
    verify_token(make_token(SECRET), [SECRET], 300)


def test_token_is_ms_dot_lowercase_hex_of_the_stamp() -> None:
    import hmac

    token = make_token(SECRET, 1_700_000_000_000)
    stamp, sig = token.split(".")
    assert stamp == "1700000000000"
    assert sig == hmac.new(SECRET, stamp.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("offset_s", [-301, 301, -10_000])
def test_token_outside_skew_is_refused(offset_s: int) -> None:
    token = make_token(SECRET, now_ms() + offset_s * 1000)
    with pytest.raises(Unauthorized, match="expired"):
        verify_token(token, [SECRET], 300)


@pytest.mark.parametrize("offset_s", [-299, 299])
def test_token_inside_skew_is_accepted(offset_s: int) -> None:
    verify_token(make_token(SECRET, now_ms() + offset_s * 1000), [SECRET], 300)


def test_wrong_secret_is_refused() -> None:
    with pytest.raises(Unauthorized, match="invalid"):
        verify_token(make_token(OTHER), [SECRET], 300)


def test_any_rotated_secret_verifies() -> None:
    verify_token(make_token(OTHER), [SECRET, OTHER], 300)
    verify_token(make_token(SECRET), [SECRET, OTHER], 300)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "123.",
        ".abc",
        "12a.{}".format("0" * 64),
        "123." + "G" * 64,
        "123." + "0" * 63,
        "1" * 20 + "." + "0" * 64,
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(Unauthorized):
        verify_token(token, [SECRET], 300)


def test_signed_request_binds_method_path_and_body() -> None:
    verifier = RequestVerifier([SECRET], 300, "signed")
    body = hashlib.sha256(b'{"a":1}').hexdigest()
    header = sign_request(SECRET, "POST", "/v1/sandboxes?x=1", body)
    verifier.check_signature_header(header, "POST", "/v1/sandboxes?x=1", body)
    for method, path, digest in [
        ("DELETE", "/v1/sandboxes?x=1", body),
        ("POST", "/v1/sandboxes?x=2", body),
        ("POST", "/v1/sandboxes?x=1", hashlib.sha256(b"{}").hexdigest()),
    ]:
        fresh = sign_request(SECRET, "POST", "/v1/sandboxes?x=1", body, now_ms() + 1)
        with pytest.raises(Unauthorized, match="invalid request signature"):
            verifier.check_signature_header(fresh, method, path, digest)


def test_replayed_signature_is_refused() -> None:
    verifier = RequestVerifier([SECRET], 300, "signed")
    header = sign_request(SECRET, "GET", "/v1/sandboxes")
    verifier.check_signature_header(header, "GET", "/v1/sandboxes", hashlib.sha256(b"").hexdigest())
    with pytest.raises(Unauthorized, match="replayed"):
        verifier.check_signature_header(header, "GET", "/v1/sandboxes", hashlib.sha256(b"").hexdigest())


def test_expired_signature_is_refused() -> None:
    verifier = RequestVerifier([SECRET], 300, "signed")
    header = sign_request(SECRET, "GET", "/x", at_ms=now_ms() - 400_000)
    with pytest.raises(Unauthorized, match="expired"):
        verifier.check_signature_header(header, "GET", "/x", hashlib.sha256(b"").hexdigest())


@pytest.mark.parametrize("value", ["", "t=1", "v1=" + "0" * 64, "t=1,v1=zz", "t=1,t=2,v1=" + "0" * 64, "garbage"])
def test_malformed_signature_headers(value: str) -> None:
    with pytest.raises(Unauthorized):
        parse_signature_header(value)


def test_replay_cache_forgets_expired_and_stays_bounded() -> None:
    cache = ReplayCache(ttl_seconds=1, max_entries=3)
    assert cache.add("a", 0)
    assert not cache.add("a", 1)
    assert cache.add("a", 10_000)  # expired entries are forgotten
    for i in range(10):
        assert cache.add(f"s{i}", 10_000)
    assert len(cache._seen) <= 3


def test_bearer_header_forms() -> None:
    verifier = RequestVerifier([SECRET], 300, "token")
    verifier.check_bearer(f"Bearer {make_token(SECRET)}")
    verifier.check_bearer(f"bearer {make_token(SECRET)}")
    for header in [None, "", "Basic abc", "Bearer", f"Token {make_token(SECRET)}"]:
        with pytest.raises(Unauthorized):
            verifier.check_bearer(header)


def test_nonce_makes_identical_concurrent_requests_distinct() -> None:
    verifier = RequestVerifier([SECRET], 300, "signed")
    at = now_ms()
    first = sign_request(SECRET, "POST", "/v1/sandboxes", at_ms=at, nonce="aaaa")
    second = sign_request(SECRET, "POST", "/v1/sandboxes", at_ms=at, nonce="bbbb")
    for header in (first, second):
        verifier.check_signature_header(header, "POST", "/v1/sandboxes", hashlib.sha256(b"").hexdigest())
    with pytest.raises(Unauthorized, match="replayed"):
        verifier.check_signature_header(first, "POST", "/v1/sandboxes", hashlib.sha256(b"").hexdigest())
    # The nonce is signed: changing it breaks the signature.
    forged = first.replace("n=aaaa", "n=cccc")
    with pytest.raises(Unauthorized, match="invalid"):
        verifier.check_signature_header(forged, "POST", "/v1/sandboxes", hashlib.sha256(b"").hexdigest())
