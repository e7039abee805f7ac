"""The control-plane host allow list."""

from __future__ import annotations

import pytest

from app.errors import HostNotAllowed
from app.services.hosts import check_url_allowed

ALLOWED = ["cp.example.com", "127.0.0.1:8787", "*.inspect.dev"]


@pytest.mark.parametrize(
    "url",
    ["https://cp.example.com/x", "http://cp.example.com:8080/", "http://127.0.0.1:8787/cb", "https://a.inspect.dev/"],
)
def test_allowed(url: str) -> None:
    assert check_url_allowed(url, ALLOWED, field="callback_url") == url


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/",
        "https://cp.example.com.evil.net/",
        "http://127.0.0.1:9999/",
        "https://inspect.dev/",
        "ftp://cp.example.com/",
        "https://user:pw@cp.example.com/",
        "not a url",
        "http://[::1/",
    ],
)
def test_refused(url: str) -> None:
    with pytest.raises(HostNotAllowed) as err:
        check_url_allowed(url, ALLOWED, field="callback_url")
    assert err.value.status_code == 400
    assert err.value.code == "host_not_allowed"


def test_empty_list_allows_nothing_and_says_why() -> None:
    with pytest.raises(HostNotAllowed, match="is empty"):
        check_url_allowed("https://cp.example.com/", [], field="control_plane_url")
