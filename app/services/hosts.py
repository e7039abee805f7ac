"""The control-plane host allow list (``ALLOWED_CONTROL_PLANE_HOSTS``).

Checked before anything is created or answered: a URL we would call back or
hand to a sandbox must point at a host the operator named. Entries are a host
(``cp.example.com``), a host and port (``127.0.0.1:8787``) or a wildcard for
subdomains (``*.example.com``). An empty list allows nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from app.errors import HostNotAllowed


def _matches(entry: str, host: str, port: int | None) -> bool:
    entry = entry.strip().lower()
    entry_host, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
    if entry_port and (not entry_port.isdigit() or port != int(entry_port)):
        return False
    pattern = entry_host or entry
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host != pattern[2:]
    return host == pattern


def check_url_allowed(url: str, allowed: Sequence[str], *, field: str) -> str:
    """Return ``url`` when its scheme is http(s) and its host is allowed; else raise ``HostNotAllowed``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise HostNotAllowed(f"{field} is not a valid URL", field=field) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HostNotAllowed(f"{field} must be an http(s) URL with a host", field=field)
    if parts.username or parts.password:
        raise HostNotAllowed(f"{field} must not carry credentials", field=field)
    host = parts.hostname.lower()
    effective_port = port or (443 if parts.scheme == "https" else 80)
    if not any(_matches(entry, host, effective_port) for entry in allowed if entry.strip()):
        hint = "" if allowed else " (ALLOWED_CONTROL_PLANE_HOSTS is empty)"
        raise HostNotAllowed(f"{field} host {host!r} is not in ALLOWED_CONTROL_PLANE_HOSTS{hint}", field=field)
    return url
