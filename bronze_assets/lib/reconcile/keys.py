"""How a reconciliation names keys (ARCHITECTURE §2.8). A table keyed by one integer column is
compared by that integer and bisected over key ranges (index range scans on the source). Any
other key — composite, text, uuid, numeric, date/time … — is named by its text: PostgreSQL's
``col::text`` of the key column (§2.2's rendering), or for a composite key the JSON array of its
columns' texts. The source renders it in SQL; bronze renders its stored values with
:func:`~bronze_assets.lib.enrich.pgtext.column_text` (only for the few rows of differing buckets),
so both sides name a key alike. Such a table is bisected over its rows' hash positions
(:func:`~bronze_assets.lib.reconcile.checksum.position`): neither side renders a key to bucket it."""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa

from bronze_assets.contracts import Contract, ReadMode, TypeFamily
from bronze_assets.lib.enrich.pgtext import column_text

INTEGER_KEYS = (TypeFamily.SMALLINT, TypeFamily.INTEGER, TypeFamily.BIGINT)
STATUS = "record_status"
Key = int | str


def by_integer_key(contract: Contract) -> bool:
    """Whether ``contract`` is keyed by one integer column (compared and bisected by it)."""
    key = contract.primary_key
    return not contract.keyless and len(key) == 1 and contract.column(key[0]).type.family in INTEGER_KEYS


def unsupported_key(contract: Contract) -> str | None:
    """Why the keys of ``contract`` cannot be named alike on both sides (None: they can)."""
    if contract.keyless or by_integer_key(contract):
        return None
    key = contract.primary_key
    parsed = [k for k in key if contract.column(k).type.read is ReadMode.PARSED]
    encrypted = [k for k in key if k in contract.encrypted_columns]
    if not parsed and not encrypted:
        return None
    why = (f"{', '.join(parsed)} stored parsed from PostgreSQL's text (real/double precision/money), "
           f"which bronze does not re-render" if parsed else f"{', '.join(encrypted)} encrypted in bronze")
    return (f"{contract.bronze_table}: reconcile cannot name the keys of {contract.source_ref} alike on "
            f"both sides: key column {why}")


def text_names(contract: Contract) -> list[str]:
    """The names the key columns' texts travel under (``_k0``, ``_k1`` …)."""
    return [f"_k{i}" for i in range(len(contract.primary_key))]


def key_expr(contract: Contract) -> pl.Expr:
    """Polars: the key's name (``key``) from its columns' texts (:func:`text_names`)."""
    names = text_names(contract)
    if len(names) == 1:
        return pl.col(names[0]).cast(pl.Utf8).alias("key")
    return pl.struct(names).map_elements(lambda row: json.dumps([row[n] for n in names], ensure_ascii=False),
                                         return_dtype=pl.Utf8).alias("key")


def key_texts(contract: Contract, key: str) -> tuple[str | None, ...]:
    """The key columns' texts of a key named by text (the inverse of :func:`key_expr`)."""
    if len(contract.primary_key) == 1:
        return (key,)
    texts = json.loads(key)
    if not isinstance(texts, list) or len(texts) != len(contract.primary_key):
        raise ValueError(f"{contract.bronze_table}: {key!r} does not name a key of "
                         f"({', '.join(contract.primary_key)})")
    return tuple(None if t is None else str(t) for t in texts)


def _plain_strings(table: pa.Table) -> pa.Table:
    return table.cast(pa.schema([pa.field(f.name, pa.string()) if pa.types.is_string_view(f.type)
                                 or pa.types.is_large_string(f.type) else f for f in table.schema]))


def rendered_keys(table: pa.Table, contract: Contract) -> pl.Series:
    """The name of each row's key, rendered from bronze's stored key columns."""
    table = _plain_strings(table)
    texts = {n: column_text(table.column(k).combine_chunks(), contract.column(k).type)
             for n, k in zip(text_names(contract), contract.primary_key, strict=True)}
    frame = pl.from_arrow(pa.table(texts)) if table.num_rows else \
        pl.DataFrame(schema=dict.fromkeys(texts, pl.Utf8))
    assert isinstance(frame, pl.DataFrame)
    return frame.select(key_expr(contract)).get_column("key")


def key_values(table: pa.Table, contract: Contract) -> list[Key]:
    """The key of each row of ``table`` (bronze columns) as a reconciliation names it."""
    if contract.keyless or by_integer_key(contract):
        column = table.column(contract.merge_key[0])
        return [v if isinstance(v, str) else int(v) for v in column.to_pylist()]
    return rendered_keys(table, contract).to_list()


def keyed_rows(table: pa.Table, contract: Contract) -> pl.DataFrame:
    """key (named by text), bronze_hash, status of bronze rows read with their key columns,
    ``record_hash`` and ``record_status``."""
    table = _plain_strings(table)
    hashes = pl.from_arrow(table.select(["record_hash", STATUS]))
    assert isinstance(hashes, pl.DataFrame)
    return hashes.select(rendered_keys(table, contract).alias("key"),
                         pl.col("record_hash").cast(pl.Utf8).alias("bronze_hash"),
                         pl.col(STATUS).cast(pl.Utf8).alias("status"))
