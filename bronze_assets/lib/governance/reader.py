"""Role-aware reads of bronze tables: decrypt, mask per the access matrix, audit every PII read.

This enforces the matrix for callers of the Python API and the ``bronze read`` command; it is
not a security boundary on its own (the process holds the master key). On Databricks, Unity
Catalog column masks (``bronze uc-sql``) enforce the same matrix server-side.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError
from pyarrow.parquet import filters_to_expression

from bronze_assets.contracts import Contract, get_contract
from bronze_assets.lib.delta.control import audited
from bronze_assets.lib.delta.query import query_tables, quoted
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.enrich.metadata import FORGOTTEN
from bronze_assets.lib.governance.access import Role, mask_expr, mask_for, parse_role, sees_plaintext
from bronze_assets.lib.governance.pii import PiiCipher

PII_READ = "PII_READ"
STATUS = "record_status"


class TableNotLoadedError(RuntimeError):
    """The bronze table does not exist yet under the bronze root."""


class ReadConditionError(ValueError):
    """A ``where`` condition that does not parse, names an unknown column, fails on the table's
    data, or filters on personal data the role may not read in plaintext."""


def open_bronze(contract: Contract, storage: StorageLike) -> DeltaTable:
    """The current version of ``bz_<table>``, or an error that says how to create it."""
    storage = as_storage(storage)
    uri = storage.uri(contract.bronze_table)
    dt = storage.open(contract.bronze_table)
    if dt is None:
        from datetime import UTC, datetime

        from bronze_assets.lib.monitoring.status import commands

        load, _, _ = commands(contract, datetime.now(UTC), storage.settings)  # the partitions Dagster needs
        raise TableNotLoadedError(
            f"{contract.bronze_table} does not exist at {uri}. Load it first (`bronze demo`, or "
            f"`{load}`), or point BRONZE_ROOT at the bronze root that holds it."
        )
    return dt


def protect(
    data: pa.Table, contract: Contract, role: Role, storage: StorageLike,
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
    storage: StorageLike,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    limit: int | None = None,
    job_id: str | None = None,
    where: str | None = None,
) -> pa.Table:
    """The current rows of ``bz_<table>`` as ``role`` may see them, in primary key order.

    ``where`` is a SQL condition on the table's columns (DataFusion SQL, e.g.
    ``"status = 'SHIPPED' AND order_date >= DATE '2025-01-01'"``), applied in the query; a
    condition that does not parse or cannot run raises :class:`ReadConditionError` naming the
    table and the problem. On a table with PII it may not name a column the role reads masked, nor
    an encrypted one (it holds ciphertext), nor hold a subquery. ``filters`` is a DNF list
    (``[("customer_id", "=", 7)]``) or a pyarrow expression, applied to the rows the query returns;
    ``limit`` caps the rows (after ``where`` and ``filters``). Every read of a table with PII columns
    writes one ``PII_READ`` audit row (user, role, columns, rows) to ``bz_audit_log``.
    """
    contract = get_contract(table)
    role = parse_role(role)
    storage = as_storage(storage)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    dt = open_bronze(contract, storage)
    schema = pa.schema(dt.schema().to_arrow())
    names = schema.names
    requested = list(columns) if columns else names
    unknown = [c for c in requested if c not in names]
    if unknown:
        raise ValueError(f"{contract.bronze_table} has no columns {unknown}; it has: {', '.join(names)}")
    subject = [contract.data_subject] if contract.data_subject else []
    needed = list(dict.fromkeys([*requested, STATUS, *subject]))
    expr = filters_to_expression(filters) if filters is not None else None
    if where is not None and not where.strip():
        raise ReadConditionError(f"{contract.bronze_table}: the condition is empty")
    if not contract.pii_columns:
        return _scan(dt, contract, schema, requested, where, expr, limit)
    with audited(storage, contract.bronze_table, PII_READ, job_id) as entry:
        if where is not None:
            _guard_condition(contract, role, where)
        data = protect(_scan(dt, contract, schema, needed, where, expr, limit), contract, role, storage)
        pii = [c for c in contract.pii_columns if c in requested]
        entry.records_affected = data.num_rows
        entry.details = json.dumps({
            "role": role.value,
            "plaintext": [c for c in pii if sees_plaintext(role, contract, c)],
            "masked": [c for c in pii if not sees_plaintext(role, contract, c)],
            "version": dt.version(),
            "filters": None if expr is None else str(expr),
            "where": where,
            "limit": limit,
        })
    return data.select(requested)


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def _guard_condition(contract: Contract, role: Role, where: str) -> None:
    """Refuse a condition that would filter on personal data the role may not read in plaintext
    (its result would reveal the value behind the mask) or on an encrypted column (it holds
    ciphertext, so the condition could not mean what it says). Every word counts, quoted or not:
    a column name inside a string literal is refused too, rather than trusting a second SQL
    tokenizer to agree with DataFusion's on every escape. Subqueries are refused on such tables
    (``SELECT *`` would reach the columns without naming them)."""
    words = {w.lower() for w in _WORD.findall(where)}
    named = {c: c.lower() in words for c in {*contract.encrypted_columns, *contract.pii_columns}}  # any case
    encrypted = sorted(c for c in contract.encrypted_columns if named[c])
    if encrypted:
        subject = f"; filter on {contract.data_subject} instead" if contract.data_subject else ""
        raise ReadConditionError(
            f"{contract.bronze_table}: the condition {where!r} names {', '.join(encrypted)}, stored "
            f"encrypted: a condition on it would compare ciphertext{subject}")
    masked = sorted(c for c in contract.pii_columns if named[c] and not sees_plaintext(role, contract, c))
    if masked:
        raise ReadConditionError(
            f"{contract.bronze_table}: the condition {where!r} names {', '.join(masked)}, which role "
            f"{role.value} reads masked: filtering on it would reveal the value behind the mask")
    if "select" in words:
        raise ReadConditionError(
            f"{contract.bronze_table}: the condition {where!r} holds a subquery, which is not allowed on "
            f"a table with personal data")


def _scan(dt: DeltaTable, contract: Contract, schema: pa.Schema, columns: list[str], where: str | None,
          expr: Any, limit: int | None) -> pa.Table:
    """``columns`` of the current version in primary key order, through DataFusion (the table's
    snapshot: deletion vectors applied, only the live files read). ``where`` goes into the query;
    ``expr`` (a pyarrow expression) filters the rows it returns, so then the limit comes after.

    Not ``DeltaTable.to_pyarrow_dataset()``: it reads the files through a Python filesystem
    (deltalake's storage handler) on pyarrow's I/O threads, and ``head()`` returns while reads of
    further files are still in flight; on a multi-file (partitioned) table the interpreter then
    aborted, segfaulted or hung at exit (issue #22). DataFusion reads in Rust and sorts by key."""
    selected = schema.names if expr is not None else columns  # expr may name any column
    sql = f"SELECT {quoted(selected)} FROM bronze"
    if where is not None:
        sql += f"\nWHERE (\n{where}\n)"  # the condition starts on line 3: see _condition_problem
    sql += f"\nORDER BY {quoted(contract.merge_key)}"
    if limit is not None and expr is None:
        sql += f"\nLIMIT {int(limit)}"
    try:
        data = query_tables({"bronze": dt}, sql)
    except DeltaError as exc:
        if where is None:
            raise
        raise _condition_error(contract, schema, where, str(exc)) from None
    data = data.select(selected).cast(pa.schema([schema.field(c) for c in selected]))  # string_view → string
    if expr is not None:
        data = data.filter(expr)
        if limit is not None:
            data = data.slice(0, limit)
        data = data.select(columns)
    return data


_POSITION = re.compile(r" at Line: (\d+), Column: (\d+)")
_FIRST_LINE = 3  # of the condition in _scan's SQL


def _condition_error(contract: Contract, schema: pa.Schema, where: str, message: str) -> ReadConditionError:
    """DataFusion's error about ``where``, in the condition's own terms: positions counted in the
    condition, the wrapping parenthesis not mentioned, unknown columns listed with the real ones."""
    table = contract.bronze_table
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    first = lines[0] if lines else message
    syntax = re.match(r'SQL error: (?:ParserError|TokenizerError)\("(.*)"\)$', first)
    if syntax:
        problem = syntax.group(1).replace('\\"', '"')
        position = _POSITION.search(problem)
        if position:
            line, column = int(position.group(1)) - _FIRST_LINE + 1, int(position.group(2))
            count = len(where.split("\n"))
            if 1 <= line <= count:
                where_in = f"line {line}, column {column}" if count > 1 else f"column {column}"
                problem = _POSITION.sub(f" at {where_in} of the condition", problem)
            else:  # past the condition: DataFusion met the parenthesis that closes it
                problem = _POSITION.sub("", problem).replace("found: )", "found: the end of the condition")
        problem = problem.replace("Expected: ), found:", "Expected: the end of the condition, found:")
        return ReadConditionError(f"{table}: the condition {where!r} does not parse: {problem}")
    unknown = re.match(r"Schema error: No field named (.+?)\.?$", first)
    if unknown:
        return ReadConditionError(f"{table}: the condition {where!r} names no column of the table: "
                                  f"{unknown.group(1)}; its columns are {', '.join(schema.names)}")
    cause = next((line for line in reversed(lines) if line != "caused by"), first)
    return ReadConditionError(f"{table}: the condition {where!r} cannot be applied: {cause}")
