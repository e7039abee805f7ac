"""Preview tokens (``app.services.previews.tokens``) and their masking in logs."""

from __future__ import annotations

import pytest

from app.errors import PreviewTokenInvalid
from app.logging import MASK, Redactor
from app.services.previews.tokens import PreviewSigner, parse_token

SECRET = b"s" * 40
PREVIEW = "pv" + "a" * 20


def test_a_token_verifies_only_for_its_sandbox_port_and_expiry() -> None:
    signer = PreviewSigner([SECRET])
    token = signer.token(PREVIEW, "sbx_1", 3000, 2_000_000_000)
    parsed = parse_token(token)
    assert parsed.preview_id == PREVIEW and parsed.expires == 2_000_000_000
    assert signer.verify(parsed, "sbx_1", 3000)
    assert not signer.verify(parsed, "sbx_2", 3000)
    assert not signer.verify(parsed, "sbx_1", 3001)
    assert not signer.verify(parse_token(token.replace(".2000000000.", ".2000000001.")), "sbx_1", 3000)
    assert SECRET.decode() not in token


def test_the_key_is_derived_and_rotation_verifies_with_any_secret() -> None:
    old, new = PreviewSigner([b"o" * 40]), PreviewSigner([b"n" * 40, b"o" * 40])
    token = old.token(PREVIEW, "sbx_1", 80, 2_000_000_000)
    assert new.verify(parse_token(token), "sbx_1", 80)
    assert not PreviewSigner([b"n" * 40]).verify(parse_token(token), "sbx_1", 80)


@pytest.mark.parametrize(
    "bad", ["", "x", f"{PREVIEW}.1.short", f"PV{'a' * 20}.1.{'A' * 43}", f"{PREVIEW}.1.{'A' * 43}/x"]
)
def test_malformed_tokens(bad: str) -> None:
    with pytest.raises(PreviewTokenInvalid):
        parse_token(bad)


def test_tokens_are_masked_in_logs() -> None:
    token = PreviewSigner([SECRET]).token(PREVIEW, "sbx_1", 3000, 2_000_000_000)
    line = Redactor().scrub(f'"GET /p/{token}/app.js HTTP/1.1" and ?preview_token={token}')
    assert token not in line and line.count(f"{PREVIEW}.2000000000.{MASK}") == 2
