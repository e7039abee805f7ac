"""Preview tokens: ``<preview id>.<expiry, epoch s>.<signature>``, URL-safe.

The signature is HMAC-SHA256 under a key derived from the API secret for this
purpose only, over the preview id, the sandbox id, the port and the expiry. The
sandbox and port are not in the token: they are read from the preview's row, so
a token verifies only for the preview it was made for, and deleting the row
revokes it on every replica. The API secret itself never appears in a URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from app.errors import PreviewTokenInvalid

#: The derivation label: a key for preview tokens cannot sign anything else.
_PURPOSE = b"sandbox-control/preview-token/v1"
_TOKEN = re.compile(r"^(pv[0-9a-f]{20})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ParsedToken:
    """A token's claims, before its signature is checked against the preview's row."""

    preview_id: str
    expires: int
    signature: str


class PreviewSigner:
    """Signs with the first API secret's derived key; verifies with any (secret rotation)."""

    def __init__(self, api_secrets: list[bytes]) -> None:
        if not api_secrets:
            raise ValueError("no API secret to derive the preview key from")
        self._keys = [hmac.new(secret, _PURPOSE, hashlib.sha256).digest() for secret in api_secrets]

    def _sign(self, key: bytes, preview_id: str, sandbox_id: str, port: int, expires: int) -> str:
        message = f"{preview_id}\n{sandbox_id}\n{port}\n{expires}".encode()
        digest = hmac.new(key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def token(self, preview_id: str, sandbox_id: str, port: int, expires: int) -> str:
        return f"{preview_id}.{expires}.{self._sign(self._keys[0], preview_id, sandbox_id, port, expires)}"

    def verify(self, parsed: ParsedToken, sandbox_id: str, port: int) -> bool:
        """True when ``parsed`` was signed for this preview's sandbox and port (constant time)."""
        return any(
            hmac.compare_digest(self._sign(key, parsed.preview_id, sandbox_id, port, parsed.expires), parsed.signature)
            for key in self._keys
        )


def parse_token(token: str) -> ParsedToken:
    """A token's parts, or ``PreviewTokenInvalid`` when it is not shaped like one."""
    match = _TOKEN.match(token)
    if match is None:
        raise PreviewTokenInvalid("malformed preview token")
    return ParsedToken(match.group(1), int(match.group(2)), match.group(3))
