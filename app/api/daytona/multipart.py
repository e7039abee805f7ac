"""``multipart/form-data`` answers as Daytona's bulk download streams them.

One part per requested path, named ``file`` (the bytes) or ``error`` (a JSON
error body), its ``filename`` the path asked for: what the SDK's parser
matches results to.
"""

from __future__ import annotations

import secrets


def new_boundary() -> str:
    return secrets.token_hex(16)


def part_head(boundary: str, name: str, filename: str, content_type: str) -> bytes:
    """The opening of one part (the payload and ``b"\\r\\n"`` follow)."""
    quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{quoted}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()
