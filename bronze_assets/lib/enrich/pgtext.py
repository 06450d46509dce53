"""PostgreSQL's ``col::text`` of ADBC-read Arrow columns, the record hash, and storable values.

The ADBC PostgreSQL driver (binary COPY) hands over the server's binary values with quirks this
module undoes, so the text rendered here is bit-for-bit what PostgreSQL prints for
``col::text`` in a session with ``SET TimeZone='UTC'; SET DateStyle='ISO, MDY'``:

* ``date`` → date32: PostgreSQL's int32 days since 2000-01-01 plus 10957, computed with int32
  wraparound. Every real date (4714-11-24 BC … 5874897-12-31) arrives as correct days since
  1970; only the sentinels ``infinity`` / ``-infinity`` wrap, to ``-2147472692`` /
  ``-2147472691``.
* ``timestamp with time zone`` → timestamp[us, UTC]: int64 µs since 2000 plus 946684800000000
  with int64 wraparound. ``infinity`` / ``-infinity`` arrive as ``-9222425352054775809`` /
  ``-9222425352054775808``; instants from about year 294247 on arrive wrapped (true value =
  arrived + 2**64); everything else arrives as correct µs since 1970.
* ``numeric`` → an ``arrow.opaque`` extension array whose storage is the decimal text (``nan``
  for NaN); a plain string array or a ``decimal128`` array is accepted too.
* ``timestamp`` (without time zone) → timestamp[us], the same µs and sentinels as timestamptz,
  printed without the ``+00``; ``smallint``/``boolean`` as they are (``bool::text`` is
  ``true``/``false``); ``bytea`` → binary, printed ``\\x`` + lowercase hex; ``character(n)`` → the
  padded string, printed without trailing spaces (as ``bpchar::text`` does).
* every other type (the ``text``/``parsed`` read modes of
  :data:`bronze_assets.contracts.types.TYPE_MAP`) arrives as PostgreSQL's own ``col::text``
  (the extraction query asks for it), which is hashed as it is.

Rendering is vectorised: the common path (years 1..9999, canonical decimal text) is DuckDB's
own ``CAST(… AS VARCHAR)`` (same digits as PostgreSQL for those values); the rare rest (BC, years
beyond 9999, infinities, wrapped instants, non-canonical decimal text) is computed for just those
rows with integer arithmetic on the proleptic Gregorian calendar (as PostgreSQL does) and handed
to DuckDB alongside (``coalesce(rare, common)``). One DuckDB projection renders, assembles and
digests the record text of a whole batch (``length`` counts code points, like PostgreSQL's;
rendered non-text values are ASCII, so their byte length is used).

Record hash (ARCHITECTURE §2.2), ``version=2`` (the pinned contract)::

    md5(concat_ws(E'\\x1f', coalesce(length(c1::text) || ':' || c1::text, '\\N'), …))

with ``length`` in characters and NULL written as backslash-N without a length; ``version=1``
(legacy) is ``md5(concat_ws(E'\\x1f', coalesce(c1::text, '\\N'), …))``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from bronze_assets.contracts.arrow import arrow_type
from bronze_assets.contracts.model import Contract, PgType
from bronze_assets.contracts.types import ReadMode, TypeFamily

__all__ = [
    "DATE_NEG_INFINITY",
    "DATE_POS_INFINITY",
    "HASH_VERSIONS",
    "TS_NEG_INFINITY",
    "TS_POS_INFINITY",
    "column_text",
    "hash_texts",
    "record_hash",
    "storable",
]

HASH_VERSIONS = (1, 2)

# How ADBC delivers PostgreSQL's infinities (the sentinel plus the epoch shift, wrapped).
DATE_POS_INFINITY = -2147472692  # INT32_MAX + 10957, wrapped
DATE_NEG_INFINITY = -2147472691  # INT32_MIN + 10957, wrapped
TS_POS_INFINITY = -9222425352054775809  # INT64_MAX + 946684800000000, wrapped
TS_NEG_INFINITY = -9222425352054775808  # INT64_MIN + 946684800000000, wrapped

_US_PER_DAY = 86_400_000_000
# Smallest timestamptz PostgreSQL accepts (4714-11-24 00:00:00+00 BC) in µs since 1970: an
# arrived value below it (other than the two sentinels) is a wrapped far-future instant.
_TS_MIN_US = -210_866_803_200_000_000
# 2**64 = _WRAP_DAYS days + _WRAP_US µs, so a wrapped value is fixed up in int64 (days, µs).
_WRAP_DAYS, _WRAP_US = divmod(2**64, _US_PER_DAY)

# Years 1..9999 (inclusive lower / exclusive upper bound): the common path and the storable range.
_DATE_MIN, _DATE_END = -719_162, 2_932_897  # 0001-01-01, 10000-01-01 in days since 1970
_TS_MIN, _TS_END = _DATE_MIN * _US_PER_DAY, _DATE_END * _US_PER_DAY


_local = threading.local()
ArrayLike = pa.Array | pa.ChunkedArray


# ---------------------------------------------------------------------------------------------
# input normalisation


def _as_array(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    return arr


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


_DATE, _TS, _TSTZ = TypeFamily.DATE, TypeFamily.TIMESTAMP, TypeFamily.TIMESTAMPTZ
_CALENDAR = (_DATE, _TS, _TSTZ)
_ASCII_CAST = (TypeFamily.DATE, TypeFamily.SMALLINT, TypeFamily.INTEGER, TypeFamily.BIGINT,
               TypeFamily.BOOLEAN)


def _as_text(type_: PgType) -> bool:
    """Whether the column arrives as (and is hashed from) text: text types, and PostgreSQL's own
    ``col::text`` of the ``text``/``parsed`` read modes; numerics arrive as decimal text too."""
    return type_.is_text or type_.read is ReadMode.PARSED or type_.is_numeric


def _physical(arr: pa.Array | pa.ChunkedArray, type_: PgType) -> pa.Array:
    """The array the renderer of ``type_`` reads: int32 days, int64 µs, decimal text, ints, text."""
    arr = _as_array(arr)
    t = arr.type
    if type_.family is _DATE:
        return (arr if pa.types.is_date32(t) else arr.cast(pa.date32())).view(pa.int32())
    if type_.family in (_TS, _TSTZ):
        if not pa.types.is_timestamp(t):
            return arr.cast(pa.int64())
        if t.unit != "us":
            arr = arr.cast(pa.timestamp("us", tz=t.tz))
        return arr.view(pa.int64())
    if _as_text(type_):
        return arr if _is_text(t) else arr.cast(pa.string())  # decimal128 prints `scale` digits
    want = arrow_type(type_)
    return arr if t == want else arr.cast(want)


def _series(arr: pa.Array, name: str = "v") -> pl.Series:
    s = pl.from_arrow(arr)
    assert isinstance(s, pl.Series)
    return s.alias(name)


def _to_string(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    arr = _as_array(arr)
    return arr if arr.type == pa.string() else arr.cast(pa.string())


# ---------------------------------------------------------------------------------------------
# the common path: DuckDB SQL over the physical column


def _text_sql(col: str, type_: PgType) -> str:
    """DuckDB SQL of the text of the common-path rows of the DuckDB input column ``col``."""
    family = type_.family
    if family is _TSTZ:  # a naive timestamp; DuckDB trims trailing fraction zeros too
        return f"(CAST({col} AS VARCHAR) || '+00')"
    if family in _ASCII_CAST or family is _TS:  # booleans: true/false, as bool::text
        return f"CAST({col} AS VARCHAR)"
    if family is TypeFamily.BYTEA:  # bytea_output 'hex'
        return f"('\\x' || lower(hex({col})))"
    if family is TypeFamily.CHAR:  # character(n)::text drops the padding
        return f"rtrim({col}, ' ')"
    return col  # text; PostgreSQL's own text; numeric text, canonical rows only


# Families whose ::text is always ASCII (under the pinned session: lc_monetary 'C' for money), so
# its length in characters is its length in bytes; every other text is counted in characters.
_ASCII_TEXT = frozenset({
    TypeFamily.SMALLINT, TypeFamily.INTEGER, TypeFamily.BIGINT, TypeFamily.NUMERIC, TypeFamily.REAL,
    TypeFamily.DOUBLE, TypeFamily.BOOLEAN, TypeFamily.DATE, TypeFamily.TIMESTAMP, TypeFamily.TIMESTAMPTZ,
    TypeFamily.TIME, TypeFamily.TIMETZ, TypeFamily.INTERVAL, TypeFamily.UUID, TypeFamily.BYTEA,
    TypeFamily.MONEY, TypeFamily.INET, TypeFamily.CIDR, TypeFamily.MACADDR, TypeFamily.MACADDR8,
})


def _length_sql(type_: PgType) -> str:
    """DuckDB's length of the rendered text: bytes for ASCII renderings, else characters."""
    return "strlen" if type_.family in _ASCII_TEXT else "length"


def _duck_input(arr: ArrayLike, type_: PgType) -> tuple[pa.Array, pa.Array | None, bool]:
    """(the column DuckDB renders, NULL at the rare rows; their exact text, NULL elsewhere, or
    None; whether the column holds NULLs)."""
    phys = _physical(arr, type_)
    nullable = phys.null_count > 0
    rows = _rare_rows(phys, type_)
    rare = None
    if len(rows):
        rare = _scatter(len(phys), rows, _to_string(_rare_text(phys.take(rows), type_).to_arrow()))
        mask = np.zeros(len(phys), bool)
        mask[rows] = True
        phys = pc.if_else(pa.array(mask), pa.scalar(None, phys.type), phys)
    if type_.family is _DATE:
        phys = phys.view(pa.date32())
    elif type_.family in (_TS, _TSTZ):
        phys = phys.view(pa.timestamp("us"))
    return phys, rare, nullable


def _scatter(n: int, rows: np.ndarray, values: pa.Array) -> pa.Array:
    """A length-``n`` array holding ``values`` at ``rows`` and NULL elsewhere."""
    index = np.full(n, len(rows), np.int64)
    index[rows] = np.arange(len(rows))
    return pa.concat_arrays([values, pa.nulls(1, values.type)]).take(pa.array(index))


def _relation(columns: Sequence[tuple[ArrayLike, PgType]]) -> tuple[
        duckdb.DuckDBPyRelation, list[tuple[str, str, bool]]]:
    """A DuckDB relation over the columns and, per column, (text SQL, length function, may be NULL)."""
    arrays: dict[str, pa.Array] = {}
    texts = []
    for i, (arr, type_) in enumerate(columns):
        arrays[f"c{i}"], rare, nullable = _duck_input(arr, type_)
        sql = _text_sql(f"c{i}", type_)
        if rare is not None:
            arrays[f"r{i}"] = rare
            sql = f"coalesce(r{i}, {sql})"
        texts.append((sql, _length_sql(type_), nullable))
    table = pa.Table.from_arrays(list(arrays.values()), names=list(arrays))
    return _duckdb().from_arrow(table), texts


def _fetch(relation: duckdb.DuckDBPyRelation, sql: str) -> pa.Array:
    """The single text column ``sql`` of ``relation`` as one string array."""
    return _to_string(relation.project(f"{sql} AS v").to_arrow_table().column("v"))


def _rare_rows(phys: pa.Array, type_: PgType) -> np.ndarray:
    """Positions of the non-NULL rows the common path does not render."""
    if type_.family in _CALENDAR:
        lo, hi = (_DATE_MIN, _DATE_END) if type_.family is _DATE else (_TS_MIN, _TS_END)
        bounds = pc.min_max(phys)
        if bounds["min"].as_py() is None or (bounds["min"].as_py() >= lo and bounds["max"].as_py() < hi):
            return np.empty(0, np.int64)  # the usual batch: every value in years 1..9999
        outside = pc.or_(pc.less(phys, lo), pc.greater_equal(phys, hi))
        return pc.indices_nonzero(pc.fill_null(outside, False)).to_numpy()
    if type_.is_numeric:
        return _noncanonical_decimals(phys, _scale(type_))
    return np.empty(0, np.int64)


def _scale(type_: PgType) -> int:
    precision_scale = type_.precision_scale
    assert precision_scale is not None, type_
    return precision_scale[1]


def _text_buffers(text: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(valid, offsets, data bytes) of a non-empty string array, straight from its buffers."""
    n = len(text)
    valid = np.ones(n, bool) if text.null_count == 0 else text.is_valid().to_numpy(zero_copy_only=False)
    _, off_buf, data_buf = text.buffers()
    width = np.int64 if pa.types.is_large_string(text.type) else np.int32
    offsets = np.frombuffer(off_buf, dtype=width)[text.offset : text.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    return valid, offsets, data


def _noncanonical_decimals(text: pa.Array, scale: int) -> np.ndarray:
    """Rows whose text is not ``[-]digits.<scale digits>`` by a byte check on the raw buffers
    (the driver's text of a numeric(p, s) column is canonical; NaN and odd input are not)."""
    if len(text) == 0:
        return np.empty(0, np.int64)
    valid, offsets, data = _text_buffers(text)
    ends = offsets[1:]
    lengths = ends - offsets[:-1]
    ok = lengths >= scale + 2
    if scale == 0:  # no numeric(p, 0) in the contracts: render every value through the slow path
        ok[:] = False
    elif ok.any():
        ok &= data[np.where(ok, ends - scale - 1, 0)] == ord(".")
    return np.flatnonzero(valid & ~ok)


def _plain_decimals(text: pa.Array, target: pa.Decimal128Type) -> np.ndarray:
    """Rows whose text is ``[+-]?<1..p-s digits>.<s digits>`` (so :func:`_decimal_pattern`
    accepts it), by byte checks on the raw buffers; False for NULLs and every other text."""
    n, scale, whole = len(text), target.scale, target.precision - target.scale
    if n == 0 or scale == 0 or whole < 1:
        return np.zeros(n, bool)
    valid, offsets, data = _text_buffers(text)
    base, end = int(offsets[0]), int(offsets[-1])
    if end == base:
        return np.zeros(n, bool)
    data = data[base:end]
    starts, ends = offsets[:-1] - base, offsets[1:] - base
    first = data[np.minimum(starts, len(data) - 1)]
    sign = (ends > starts) & ((first == ord("-")) | (first == ord("+")))
    digits = ends - starts - scale - 1 - sign  # integer digits, if the shape is right
    ok = valid & (digits >= 1) & (digits <= whole)
    ok &= data[np.where(ok, ends - scale - 1, 0)] == ord(".")
    nondigit = (data - ord("0")) > 9  # uint8 wraps: every byte but 0-9
    plain = int(np.count_nonzero(ok))
    if plain == n - text.null_count and np.count_nonzero(nondigit) == plain + np.count_nonzero(sign & ok):
        return ok  # the usual batch: the dots and signs are the only non-digits in the whole buffer
    cumulative = np.concatenate(([0], np.cumsum(nondigit, dtype=offsets.dtype)))
    return ok & (cumulative[ends] - cumulative[starts] == 1 + sign)  # the dot (and sign) only


def _civil(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Proleptic Gregorian (astronomical year, month, day) of int64 days since 1970-01-01
    (Howard Hinnant's ``civil_from_days``; numpy's ``//`` floors like PostgreSQL's j2date needs)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    return yoe + era * 400 + (month <= 2), month, day


def _calendar_text(days: np.ndarray, us: np.ndarray | None, zone: str = "+00") -> pl.Series:
    """PostgreSQL's text of dates (``us`` None) or timestamps (µs of the day) of any year; ``zone``
    is the UTC offset printed after the time (``""`` for timestamp without time zone)."""
    year, month, day = _civil(days)
    bc = year <= 0
    frame = pl.DataFrame({"y": np.where(bc, 1 - year, year), "m": month, "d": day, "bc": bc})

    def pad(c: str | pl.Expr, n: int) -> pl.Expr:
        return (pl.col(c) if isinstance(c, str) else c).cast(pl.String).str.zfill(n)

    parts = [pad("y", 4), pl.lit("-"), pad("m", 2), pl.lit("-"), pad("d", 2)]
    if us is not None:
        frame = frame.with_columns(s=us // 1_000_000, f=us % 1_000_000)
        s, f = pl.col("s"), pl.col("f")
        fraction = pl.when(f != 0).then(pl.concat_str([pl.lit("."), pad(f, 6).str.strip_chars_end("0")]))
        parts += [pl.lit(" "), pad(s // 3600, 2), pl.lit(":"), pad(s // 60 % 60, 2), pl.lit(":"),
                  pad(s % 60, 2), fraction.otherwise(pl.lit("")), pl.lit(zone)]
    parts.append(pl.when(pl.col("bc")).then(pl.lit(" BC")).otherwise(pl.lit("")))
    return frame.select(pl.concat_str(parts).alias("v")).to_series()


def _rare_text(values: pa.Array, type_: PgType) -> pl.Series:
    """Text of the (non-NULL) rare rows of a column."""
    if type_.is_numeric:
        return pl.DataFrame([_series(values)]).select(_numeric_text("v", _scale(type_))).to_series()
    v = values.to_numpy(zero_copy_only=False).astype(np.int64)
    if type_.family is _DATE:
        pos, neg = v == DATE_POS_INFINITY, v == DATE_NEG_INFINITY
        text = _calendar_text(np.where(pos | neg, 0, v), None)
    else:
        pos, neg = v == TS_POS_INFINITY, v == TS_NEG_INFINITY
        wrapped = (v < _TS_MIN_US) & ~pos & ~neg
        days, us = np.divmod(v, _US_PER_DAY)
        carry, us_wrapped = np.divmod(us + np.where(wrapped, _WRAP_US, 0), _US_PER_DAY)
        days = np.where(wrapped, days + _WRAP_DAYS + carry, days)
        us = np.where(wrapped, us_wrapped, us)
        text = _calendar_text(np.where(pos | neg, 0, days), np.where(pos | neg, 0, us),
                              "+00" if type_.family is _TSTZ else "")
    special = pl.DataFrame({"pos": pos, "neg": neg, "v": text})
    return special.select(
        pl.when(pl.col("pos")).then(pl.lit("infinity"))
        .when(pl.col("neg")).then(pl.lit("-infinity"))
        .otherwise(pl.col("v")).alias("v")
    ).to_series()


def _numeric_text(col: str, scale: int) -> pl.Expr:
    """Decimal text with exactly ``scale`` fraction digits; NaN/±Infinity spelled as PostgreSQL."""
    v = pl.col(col)
    low = v.str.to_lowercase()
    expr = (
        pl.when(low == "nan").then(pl.lit("NaN"))
        .when(low.is_in(["inf", "infinity", "+inf", "+infinity"])).then(pl.lit("Infinity"))
        .when(low.is_in(["-inf", "-infinity"])).then(pl.lit("-Infinity"))
    )
    if scale == 0:
        return expr.otherwise(v).alias(col)
    dot = v.str.find(".", literal=True)
    digits = v.str.len_bytes() - dot - 1
    return (
        expr
        .when(dot.is_null()).then(pl.concat_str([v, pl.lit("." + "0" * scale)]))
        .when(digits < scale).then(v.str.pad_end(v.str.len_bytes() + scale - digits, "0"))
        .otherwise(v)
        .alias(col)
    )


def column_text(arr: ArrayLike, type_: PgType, where: pa.Array | None = None) -> pa.Array:
    """PostgreSQL's ``col::text`` of every value (UTC, ISO dates); null where the value is NULL.

    With ``where`` (boolean), only those rows are rendered; the others are NULL.
    """
    if where is not None:
        rows = pc.indices_nonzero(pc.fill_null(where, False)).to_numpy()
        return _scatter(len(where), rows, column_text(_as_array(arr).take(rows), type_))
    if _as_text(type_) and not type_.is_numeric and type_.family is not TypeFamily.CHAR:
        return _to_string(_physical(arr, type_))  # the text is PostgreSQL's already
    relation, [(sql, _, _)] = _relation([(arr, type_)])
    return _fetch(relation, sql)


# ---------------------------------------------------------------------------------------------
# record hash


_duck_lock = threading.Lock()
_duck_db: tuple[int, duckdb.DuckDBPyConnection] | None = None


def _duckdb() -> duckdb.DuckDBPyConnection:
    """This thread's cursor on the process's in-memory DuckDB database.

    DuckDB connections are not shared between threads: every thread gets its own cursor (a
    connection to the same database, sharing one worker pool). Recreated after a fork.
    """
    global _duck_db
    pid = os.getpid()
    cursor = getattr(_local, "cursor", None)
    if cursor is not None and _local.pid == pid:
        return cursor
    with _duck_lock:
        if _duck_db is None or _duck_db[0] != pid:
            base = duckdb.connect(":memory:")
            base.execute("SET preserve_insertion_order = true")  # rows come back in input order
            _duck_db = (pid, base)
        cursor = _duck_db[1].cursor()
    _local.cursor, _local.pid = cursor, pid
    return cursor


def _hash_sql(texts: list[tuple[str, str, bool]], version: int) -> str:
    """The DuckDB expression of the record hash over (text SQL, length function, may be NULL).

    One flat ``concat`` (which skips NULL arguments): a NULL value contributes its NULL
    ``len || ':'`` (skipped) and ``coalesce(text, '\\N')``, so the digested bytes are exactly those
    of the SQL in the module docstring.
    """
    if version not in HASH_VERSIONS:
        raise ValueError(f"unknown record_hash version {version!r} (one of {HASH_VERSIONS})")
    parts: list[str] = []
    for i, (text, length, nullable) in enumerate(texts):
        if i:
            parts.append("chr(31)")
        if version == 1:
            parts.append(f"coalesce({text}, '\\N')" if nullable else text)
        elif nullable:
            parts += [f"({length}({text}) || ':')", f"coalesce({text}, '\\N')"]
        else:
            parts += [f"{length}({text})", "':'", text]
    return f"md5(concat({', '.join(parts)}))"


def record_hash(batch: pa.RecordBatch, contract: Contract, version: int = 2) -> pa.Array:
    """Lowercase hex md5 per row over ``contract.column_names`` (see the module docstring)."""
    return hash_texts([(batch.column(c.name), c.type) for c in contract.columns], version)


def hash_texts(columns: Sequence[ArrayLike | tuple[ArrayLike, PgType]], version: int = 2) -> pa.Array:
    """The record hash over the source columns in contract order, each either already rendered as
    PostgreSQL text (e.g. a rescued column's own source text) or an ADBC-read ``(array, type)``
    pair, rendered here: one DuckDB pass renders, assembles and digests the record text."""
    if version not in HASH_VERSIONS:
        raise ValueError(f"unknown record_hash version {version!r} (one of {HASH_VERSIONS})")
    relation, texts = _relation([c if isinstance(c, tuple) else (c, PgType.TEXT) for c in columns])
    return _fetch(relation, _hash_sql(texts, version))


# ---------------------------------------------------------------------------------------------
# storable values


def storable(arr: ArrayLike, type_: PgType) -> tuple[pa.Array, pa.Array]:
    """(values in ``arrow_type(type_)``, NULL where not faithfully storable; flags).

    ``flags`` is true where a non-NULL source value is not storable: numeric NaN (or ±Infinity),
    dates/timestamps that are ±infinity or whose (UTC) year lies outside 1..9999. Every other
    value is stored exactly (decimals through an exact string → decimal128 cast, never float).
    """
    arr = _as_array(arr)
    target = arrow_type(type_)
    if type_.family in _CALENDAR:
        phys = _physical(arr, type_)
        lo, hi = (_DATE_MIN, _DATE_END) if type_.family is _DATE else (_TS_MIN, _TS_END)
        ok = pc.and_(pc.greater_equal(phys, lo), pc.less(phys, hi))
        values = pc.if_else(ok, phys, pa.scalar(None, phys.type)).view(target)
        return values, pc.fill_null(pc.invert(ok), False)
    if type_.is_numeric and not pa.types.is_decimal(arr.type):
        return _storable_decimals(_physical(arr, type_), target)
    if type_.read is ReadMode.PARSED and _is_text(arr.type):  # PostgreSQL's text, parsed exactly
        if type_.family is TypeFamily.MONEY:  # lc_monetary 'C': -$1,234.56
            arr = pc.replace_substring_regex(arr, "[$,]", "")
        return arr.cast(target), pa.repeat(pa.scalar(False), len(arr))
    values = arr if type_.is_numeric else _physical(arr, type_)
    return values.cast(target), pa.repeat(pa.scalar(False), len(arr))


def _storable_decimals(text: pa.Array, target: pa.Decimal128Type) -> tuple[pa.Array, pa.Array]:
    """:func:`storable` of decimal text: the texts :func:`_decimal_pattern` accepts, cast exactly.

    The driver's canonical text passes a byte check on the buffers; only the other rows (NaN,
    ±Infinity, overflow, odd text) are matched against the pattern.
    """
    ok = _plain_decimals(text, target)
    valid = text.is_valid().to_numpy(zero_copy_only=False)
    rest = np.flatnonzero(valid & ~ok)
    if len(rest):
        ok[rest] = pc.match_substring_regex(text.take(rest), _decimal_pattern(target)).to_numpy(
            zero_copy_only=False)
    bad = valid & ~ok
    if bad.any():
        text = pc.if_else(pa.array(ok), text, pa.scalar(None, text.type))
    return text.cast(target), pa.array(bad)


def _decimal_pattern(target: pa.Decimal128Type) -> str:
    """The texts that cast exactly to ``target``: at most ``precision - scale`` integer digits and
    ``scale`` fraction digits (anything else — NaN, ±Infinity, too many digits — is not storable)."""
    whole = f"[0-9]{{1,{target.precision - target.scale}}}" if target.precision > target.scale else "0"
    fraction = f"(\\.[0-9]{{0,{target.scale}}})?" if target.scale else ""
    return f"^[+-]?{whole}{fraction}$"
