"""Read models derived from the log, applied in the append transaction.

See docs/architecture.md, "Projections".
"""

from eventstore import Projection
from projections.accounts import AccountsProjection
from projections.personas import PersonasProjection
from projections.rebuild import diff_tables, rebuild, rebuild_in_place, table_rows
from projections.runs import RUN_COLUMNS, RunsProjection
from projections.threads import ThreadsProjection
from projections.usage import USAGE_GROUPS, UsageProjection
from projections.webhooks import WebhooksProjection

__all__ = [
    "RUN_COLUMNS",
    "USAGE_GROUPS",
    "AccountsProjection",
    "PersonasProjection",
    "RunsProjection",
    "ThreadsProjection",
    "UsageProjection",
    "WebhooksProjection",
    "all_projections",
    "diff_tables",
    "rebuild",
    "rebuild_in_place",
    "table_rows",
]


def all_projections() -> list[Projection]:
    """Every read model of the service, in the order they are applied (webhooks reads the
    runs table, so it comes after runs)."""
    return [
        AccountsProjection(),
        PersonasProjection(),
        ThreadsProjection(),
        RunsProjection(),
        UsageProjection(),
        WebhooksProjection(),
    ]
