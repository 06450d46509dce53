"""The extraction query of the scale-out engine: PostgreSQL itself computes what the local
engine renders in Arrow, so a JDBC reader gets every value exact without re-implementing
PostgreSQL's text output (ARCHITECTURE §2.2) in another language.

Per row the query returns

* every source column, in a form JDBC transfers without loss or time-zone games: integers, text,
  booleans, bytea and ``numeric`` as they are (a domain cast to its base type); ``date`` as days
  since 1970 and ``timestamp``/``timestamptz`` as µs since 1970 (the reader turns them back with
  ``date_from_unix_date`` / ``timestamp_micros``); the types the mapping table reads as text
  (:data:`bronze_assets.contracts.types.TYPE_MAP`) as PostgreSQL's ``::text``, exactly as the
  local engine reads them;
* NULL instead of a value bronze cannot store (numeric NaN/±Infinity, ±infinity, years outside
  1–9999; the same rule as :func:`bronze_assets.lib.enrich.pgtext.storable`), and in
  :data:`RESCUED` a JSON object of those values' PostgreSQL text (NULL when the row has none);
* :data:`HASH` — the §2.2 record hash, evaluated as its own definition;
* :data:`PART` — the Delta partition value as days since 1970
  (:func:`~bronze_assets.lib.source.window.partition_sql`).

The session must be pinned (UTC, ISO dates) like every session that renders.
"""

from __future__ import annotations

from collections.abc import Sequence

from bronze_assets.contracts import Contract, PgType, TypeFamily
from bronze_assets.lib.source.ddl import qualified, quote_ident
from bronze_assets.lib.source.extract import LEGACY_HASH, read_sql
from bronze_assets.lib.source.window import LoadWindow, partition_sql, window_predicate

HASH, PART, RESCUED = "record_hash", "_bronze_part", "_bronze_rescued"
JOIN_FIELDS = " || E'\\x1f' || "  # §2.2's field separator between two fields
# types whose ::text is ASCII for every value (digits, signs, ISO dates and times, 'BC', 'NaN',
# 'infinity', hex): their text's length in characters is its length in bytes
ASCII_TEXT = frozenset({TypeFamily.SMALLINT, TypeFamily.INTEGER, TypeFamily.BIGINT, TypeFamily.NUMERIC,
                        TypeFamily.DATE, TypeFamily.TIMESTAMP, TypeFamily.TIMESTAMPTZ, TypeFamily.UUID,
                        TypeFamily.BOOLEAN})
EPOCH = "DATE '1970-01-01'"


def storable_sql(column: str, type_: PgType) -> str | None:
    """SQL that is true where a non-NULL value of ``column`` can be stored in bronze (None: always)."""
    c = quote_ident(column)
    if type_.family is TypeFamily.DATE:
        return f"{c} BETWEEN DATE '0001-01-01' AND DATE '9999-12-31'"
    if type_.family is TypeFamily.TIMESTAMPTZ:
        return (f"{c} >= TIMESTAMPTZ '0001-01-01 00:00:00+00' "
                f"AND {c} < TIMESTAMPTZ '10000-01-01 00:00:00+00'")
    if type_.family is TypeFamily.TIMESTAMP:
        return f"{c} >= TIMESTAMP '0001-01-01 00:00:00' AND {c} < TIMESTAMP '10000-01-01 00:00:00'"
    if type_.is_numeric:
        return f"{c}::text NOT IN ('NaN', 'Infinity', '-Infinity')"
    return None


def _value_sql(column: str, type_: PgType) -> str:
    c = quote_ident(column)
    ok = storable_sql(column, type_)
    if type_.family is TypeFamily.DATE:
        value = f"{c} - {EPOCH}"
    elif type_.family in (TypeFamily.TIMESTAMPTZ, TypeFamily.TIMESTAMP):  # timestamp: as if UTC
        value = f"(extract(epoch FROM {c}) * 1000000)::bigint"
    else:
        value = read_sql(c, type_)
    return value if ok is None else f"CASE WHEN {ok} THEN {value} END"


def hash_sql(contract: Contract, texts: Sequence[str] | None = None, version: int = 2) -> str:
    """ARCHITECTURE §2.2 record_hash v2. ``texts``: the SQL of each column's ``::text`` when the
    caller rendered them once already (e.g. in a subquery), else ``col::text``. ``version=1``: the
    v1 hash, without lengths (computed only while a v1 table is re-hashed).

    The fields are joined by ``||`` rather than §2.2's ``concat_ws``: equal, since no field is
    NULL (each is coalesced), and cheaper — ``concat_ws`` looks up and calls each argument's output
    function per row; and the length of a text that is ASCII whatever the value (:data:`ASCII_TEXT`)
    is its ``octet_length``, which need not count characters (test_record_hash checks they agree)."""
    texts = texts or [f"{quote_ident(c)}::text" for c in contract.column_names]
    fields = []
    for column, text in zip(contract.columns, texts, strict=True):
        length = "octet_length" if column.type.family in ASCII_TEXT else "length"
        fields.append(f"coalesce({text}, '\\N')" if version == 1 else
                      f"coalesce({length}({text}) || ':' || {text}, '\\N')")
    return f"md5({JOIN_FIELDS.join(fields)})"


def rescued_sql(contract: Contract) -> str:
    """A JSON object of the row's unstorable values' text, or NULL when every value is storable."""
    checks = [(c.name, storable_sql(c.name, c.type)) for c in contract.columns]
    checks = [(name, ok) for name, ok in checks if ok is not None]
    if not checks:
        return "NULL::text"
    bad = " OR ".join(f"NOT ({ok})" for _, ok in checks)
    pairs = ", ".join(f"'{name}', CASE WHEN NOT ({ok}) THEN {quote_ident(name)}::text END"
                      for name, ok in checks)
    return f"CASE WHEN {bad} THEN jsonb_strip_nulls(jsonb_build_object({pairs}))::text END"


def pushdown_keys_sql(contract: Contract, schema: str | None = None) -> str:
    """The key sweep of the pushdown: every primary key, each column as :func:`pushdown_select_sql`
    reads it (so the engine turns keys and rows into the same bronze types)."""
    cols = ", ".join(f"{_value_sql(k, contract.column(k).type)} AS {quote_ident(k)}"
                     for k in contract.primary_key)
    return f"SELECT {cols} FROM {qualified(schema or contract.source_schema, contract.source_name)}"


def pushdown_select_sql(contract: Contract, window: LoadWindow, schema: str | None = None,
                        legacy: bool = False) -> str:
    """The extraction query of ``window`` (see the module docstring); ``legacy`` adds the v1 hash
    as :data:`~bronze_assets.lib.source.extract.LEGACY_HASH` (to re-hash a v1 table once)."""
    cols = [f"{_value_sql(c.name, c.type)} AS {quote_ident(c.name)}" for c in contract.columns]
    cols += [f"{hash_sql(contract)} AS {HASH}", f"{rescued_sql(contract)} AS {RESCUED}"]
    if legacy:
        cols.append(f"{hash_sql(contract, version=1)} AS {quote_ident(LEGACY_HASH)}")
    part = partition_sql(contract, window)
    if part is not None:
        cols.append(f"({part}) - {EPOCH} AS {PART}")
    sql = f"SELECT {', '.join(cols)} FROM {qualified(schema or contract.source_schema, contract.source_name)}"
    where = window_predicate(contract, window)
    return sql if where is None else f"{sql} WHERE ({where})"
