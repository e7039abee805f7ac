"""The one mapping between table rows and the records services work with.

Records are dataclasses whose field names are column names. Reading a row
marks its datetimes UTC (SQLite hands them back naive) and turns a NULL in a
column added after the fact into the record's default, so an old database
reads like a new one.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, TypeVar

from app.storage.state.times import aware

R = TypeVar("R")


def record_from_row(cls: type[R], row: Any) -> R:
    """Build record type ``cls`` (a dataclass) from the same-named attributes of ``row``."""
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(row, spec.name)
        if isinstance(value, datetime):
            value = aware(value)
        elif value is None and spec.default is not dataclasses.MISSING and spec.default is not None:
            value = spec.default
        elif value is None and spec.default_factory is not dataclasses.MISSING:
            value = spec.default_factory()
        values[spec.name] = value
    return cls(**values)


def row_values(record: Any) -> dict[str, Any]:
    """The column values of ``record`` (a dataclass), for an INSERT."""
    return dataclasses.asdict(record)
