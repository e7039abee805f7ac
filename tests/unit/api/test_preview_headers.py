"""What crosses the preview proxy (``app.api.previews.headers``)."""

from __future__ import annotations

import pytest

from app.api.previews.headers import (
    check_framing,
    client_response_headers,
    preview_cookie,
    token_query,
    upstream_request_headers,
    without_token_query,
)
from app.errors import BadRequest


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    sent = [
        (b"Connection", b"keep-alive, X-Drop-Me"),
        (b"x-drop-me", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"upgrade", b"h2c"),
        (b"proxy-authorization", b"Basic x"),
        (b"host", b"evil.example"),
        (b"x-preview-token", b"secret"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"cookie", b"a=1; sandbox_preview=tok; b=2"),
        (b"accept", b"*/*"),
    ]
    kept = upstream_request_headers(sent, client="10.0.0.1", host="h.example", scheme="https", chunked=False)
    assert kept == [
        (b"cookie", b"a=1; b=2"),
        (b"accept", b"*/*"),
        (b"x-forwarded-host", b"h.example"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-for", b"10.0.0.1"),
    ]
    only_preview = upstream_request_headers([(b"cookie", b"sandbox_preview=tok")], client=None, host="h",
                                            scheme="http", chunked=True)  # fmt: skip
    assert (b"cookie", b"sandbox_preview=tok") not in only_preview
    assert (b"transfer-encoding", b"chunked") in only_preview


def test_response_headers_lose_hop_by_hop_and_cannot_set_the_preview_cookie() -> None:
    answer = [
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"close"),
        (b"set-cookie", b"sandbox_preview=forged; Path=/"),
        (b"set-cookie", b"session=1"),
        (b"content-type", b"text/html"),
    ]
    assert client_response_headers(answer) == [(b"set-cookie", b"session=1"), (b"content-type", b"text/html")]


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
        [(b"content-length", b"5"), (b"content-length", b"6")],
        [(b"content-length", b"-1")],
        [(b"transfer-encoding", b"gzip, chunked")],
    ],
)
def test_ambiguous_framing_is_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(BadRequest):
        check_framing(headers)


def test_framing() -> None:
    assert check_framing([(b"transfer-encoding", b"chunked")]) is True
    assert check_framing([(b"content-length", b"5"), (b"content-length", b"5")]) is False


def test_token_in_query_and_cookie() -> None:
    assert token_query(b"a=1&preview_token=t&b=2") == "t"
    assert without_token_query(b"a=1&preview_token=t&b=2") == b"a=1&b=2"
    assert without_token_query(b"a=%2F") == b"a=%2F"  # untouched without a token
    assert preview_cookie([(b"cookie", b"x=1; sandbox_preview=tok")]) == "tok"
    assert preview_cookie([(b"cookie", b"x=1")]) is None
