"""Reconciliation of bronze with its source (ARCHITECTURE §2.8): hash bisection over key buckets
(:mod:`.bisect`; keys, or hash positions for a table not keyed by one integer column, named as
:mod:`.keys` says) between the source's snapshot (:mod:`.source_side`) and the bronze table
(:mod:`.bronze_side`), ``--deep`` re-hashing (:mod:`.deep`), the ``bz_reconciliation`` ledger
(:mod:`.ledger`), the run (:mod:`.run`) and the repair through the normal MERGE (:mod:`.repair`)."""

from bronze_assets.lib.reconcile.model import (
    ALTERED,
    DIFFERS,
    EXTRA,
    FAULTS,
    KINDS,
    MISSING,
    PENDING,
    Mismatch,
    Reconciliation,
    TableReconciliation,
)
from bronze_assets.lib.reconcile.run import reconcile, reconcile_table

__all__ = ["ALTERED", "DIFFERS", "EXTRA", "FAULTS", "KINDS", "MISSING", "PENDING", "Mismatch",
           "Reconciliation", "TableReconciliation", "reconcile", "reconcile_table"]
