"""The results store: one SQLite file, its schema and migrations (`database`), its runs' rows, outcomes and
statistics (`rows`), the claims that say which process trains which run (`claims`), the flat results table
(`table`) and the sinks a run writes its statistics and outcome through (`sinks`)."""

from sparsebench.store.claims import HEARTBEAT_S, LEASE_S, ClaimsMixin, decide, process_owner, renew
from sparsebench.store.database import (
    ARTIFACTS_KEY,
    DEFAULT_STORE,
    HINT,
    LEGACY_ARTIFACTS,
    SCHEMA_VERSION,
    STATUSES,
    ArtifactPaths,
    Database,
    default_store_path,
    own_artifacts_name,
)
from sparsebench.store.rows import RowsMixin
from sparsebench.store.table import (
    DETAIL_KEYS,
    EXTRA_COLUMNS,
    INT_COLUMNS,
    OTHER_COLUMN,
    RESULT_COLUMNS,
    int_columns,
    machine_label,
    method_columns,
    results_table,
    table_columns,
)


class Store(ClaimsMixin, RowsMixin, Database):
    """A results store at `path`: created on first use, or opened `readonly` (then it must exist, and neither
    it nor its folder is changed); its claims are taken by a grid's scheduler only."""

    def close(self) -> None:
        """Stop renewing leases, then close the connection."""
        self.stop_heartbeat()
        super().close()


__all__ = [
    "ARTIFACTS_KEY",
    "DEFAULT_STORE",
    "DETAIL_KEYS",
    "EXTRA_COLUMNS",
    "HEARTBEAT_S",
    "HINT",
    "INT_COLUMNS",
    "LEASE_S",
    "LEGACY_ARTIFACTS",
    "OTHER_COLUMN",
    "RESULT_COLUMNS",
    "SCHEMA_VERSION",
    "STATUSES",
    "ArtifactPaths",
    "Store",
    "decide",
    "default_store_path",
    "int_columns",
    "machine_label",
    "method_columns",
    "own_artifacts_name",
    "process_owner",
    "renew",
    "results_table",
    "table_columns",
]
