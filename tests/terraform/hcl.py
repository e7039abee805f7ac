"""Terraform configuration read with python-hcl2, for checks that need no provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    """python-hcl2 keeps string quotes and marks blocks; drop both."""
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse(directory: Path) -> dict[str, list[Any]]:
    """Every top-level block of the .tf files of ``directory``, by block type."""
    import hcl2

    merged: dict[str, list[Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as handle:
            for kind, blocks in _clean(hcl2.load(handle)).items():
                merged.setdefault(kind, []).extend(blocks)
    return merged


def named(parsed: dict[str, list[Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The ``variable`` or ``output`` blocks of a parsed configuration, by name."""
    return {name: body for block in parsed.get(kind, []) for name, body in block.items()}
