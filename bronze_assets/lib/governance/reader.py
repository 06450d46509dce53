"""Role-aware reads of bronze tables: decrypt, mask per the access matrix, audit every PII read.

This enforces the matrix for callers of the Python API and the ``bronze read`` command; it is
not a security boundary on its own (the process holds the master key). On Databricks, Unity
Catalog column masks (``bronze uc-sql``) enforce the same matrix server-side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
from deltalake import DeltaTable
from pyarrow.parquet import filters_to_expression

from bronze_assets.contracts import Contract, get_contract
from bronze_assets.lib.delta.control import audited
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.enrich.metadata import FORGOTTEN
from bronze_assets.lib.governance.access import Role, mask_expr, mask_for, parse_role, sees_plaintext
from bronze_assets.lib.governance.pii import PiiCipher

PII_READ = "PII_READ"
STATUS = "record_status"


class TableNotLoadedError(RuntimeError):
    """The bronze table does not exist yet under the bronze root."""


def open_bronze(contract: Contract, storage: StorageLike) -> DeltaTable:
    """The current version of ``bz_<table>``, or an error that says how to create it."""
    storage = as_storage(storage)
    uri = storage.uri(contract.bronze_table)
    dt = storage.open(contract.bronze_table)
    if dt is None:
        raise TableNotLoadedError(
            f"{contract.bronze_table} does not exist at {uri}. Load it first (`bronze demo`, or "
            f"`dagster asset materialize -m bronze_assets.definitions --select {contract.bronze_table}`)"
            f", or point BRONZE_ROOT at the bronze root that holds it."
        )
    return dt


def protect(
    data: pa.Table, contract: Contract, role: Role, storage: StorageLike = None,
) -> pa.Table:
    """Apply the matrix to bronze rows: decrypt, mask what ``role`` may not see, NULL forgotten PII."""
    pii = [c for c in contract.pii_columns if c in data.schema.names]
    if not pii:
        return data
    if any(c in contract.encrypted_columns for c in pii):
        data = PiiCipher(contract, storage).decrypt(data)
    frame = pl.from_arrow(data)
    assert isinstance(frame, pl.DataFrame)
    forgotten = pl.col(STATUS) == FORGOTTEN if STATUS in frame.columns else pl.lit(False)
    exprs = []
    for column in pii:
        value = pl.col(column) if sees_plaintext(role, contract, column) else mask_expr(
            mask_for(contract, column), column)
        exprs.append(pl.when(forgotten).then(pl.lit(None, pl.Utf8)).otherwise(value).alias(column))
    out = frame.with_columns(exprs).to_arrow()
    return pa.Table.from_arrays([out.column(f.name).cast(f.type) for f in data.schema], schema=data.schema)


def read_table(
    table: str,
    role: Role | str,
    storage: StorageLike = None,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    limit: int | None = None,
    job_id: str | None = None,
) -> pa.Table:
    """The current rows of ``bz_<table>`` as ``role`` may see them.

    ``filters`` is a DNF list (``[("customer_id", "=", 7)]``) or a pyarrow expression; ``limit``
    caps the rows. Every read of a table with PII columns writes one ``PII_READ`` audit row
    (user, role, columns, rows) to ``bz_audit_log``.
    """
    contract = get_contract(table)
    role = parse_role(role)
    storage = as_storage(storage)
    dt = open_bronze(contract, storage)
    names = [f.name for f in dt.schema().to_arrow()]
    requested = list(columns) if columns else names
    unknown = [c for c in requested if c not in names]
    if unknown:
        raise ValueError(f"{contract.bronze_table} has no columns {unknown}; it has: {', '.join(names)}")
    subject = [contract.data_subject] if contract.data_subject else []
    needed = list(dict.fromkeys([*requested, STATUS, *subject]))
    dataset = dt.to_pyarrow_dataset()
    expr = filters_to_expression(filters) if filters is not None else None
    if not contract.pii_columns:
        return _scan(dataset, requested, expr, limit)
    with audited(storage, contract.bronze_table, PII_READ, job_id) as entry:
        data = protect(_scan(dataset, needed, expr, limit), contract, role, storage)
        pii = [c for c in contract.pii_columns if c in requested]
        entry.records_affected = data.num_rows
        entry.details = json.dumps({
            "role": role.value,
            "plaintext": [c for c in pii if sees_plaintext(role, contract, c)],
            "masked": [c for c in pii if not sees_plaintext(role, contract, c)],
            "version": dt.version(),
            "filters": None if expr is None else str(expr),
            "limit": limit,
        })
    return data.select(requested)


def _scan(dataset: pads.Dataset, columns: list[str], expr: Any, limit: int | None) -> pa.Table:
    if limit is not None:
        return dataset.head(limit, columns=columns, filter=expr)
    return dataset.to_table(columns=columns, filter=expr)
