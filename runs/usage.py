"""The query of a usage report (``GET /v1/usage``): which UTC days, grouped how.

The figures come from the ``usage`` read model (``projections.usage``); this module only reads
and checks the request's parameters, each refused with ``validation.<field>`` naming it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Mapping

import msgspec

from projections.usage import USAGE_GROUPS
from runs.errors import ValidationFailed

__all__ = ["DEFAULT_DAYS", "UsageQuery", "usage_query"]

#: With no ``from``, a report covers this many days up to ``to`` (both included).
DEFAULT_DAYS = 30
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class UsageQuery(msgspec.Struct, frozen=True):
    first_day: str
    last_day: str
    group_by: str


def _day(field: str, raw: str | None) -> dt.date | None:
    if raw is None:
        return None
    day = None
    if _DAY.match(raw):
        with contextlib.suppress(ValueError):
            day = dt.date.fromisoformat(raw)
    if day is None:
        raise ValidationFailed(
            f"{field} must be a date as YYYY-MM-DD (UTC)", code=f"validation.{field}", field=field
        )
    return day


def usage_query(params: Mapping[str, str], today: dt.date) -> UsageQuery:
    """The report's days and grouping from the query string; ``today`` is the UTC date."""
    group_by = params.get("group_by", "day")
    if group_by not in USAGE_GROUPS:
        raise ValidationFailed(
            f"group_by must be one of {', '.join(USAGE_GROUPS)}",
            code="validation.group_by",
            field="group_by",
        )
    last = _day("to", params.get("to"))
    first = _day("from", params.get("from"))
    if last is None:
        last = today
    if first is None:
        try:
            first = last - dt.timedelta(days=DEFAULT_DAYS - 1)
        except OverflowError:
            first = dt.date.min
    if first > last:
        raise ValidationFailed(
            "from must not be after to", code="validation.from", field="from", to=last.isoformat()
        )
    return UsageQuery(first.isoformat(), last.isoformat(), group_by)
