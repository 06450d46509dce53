"""PostgreSQL column types: a parsed type value and THE mapping table (ARCHITECTURE §2.10).

A column's type is what the catalog's ``format_type(atttypid, atttypmod)`` prints
(``character varying(200)``, ``numeric(18,4)``, ``integer[]``, an enum's or a domain's name …),
parsed into a :class:`PgType`: its spelling (compared with the live catalog to detect drift), its
:class:`TypeFamily` (a domain takes its base type's) and parameters. Every decision about a family
— the Delta type bronze stores it as, how extraction reads it, how the record hash renders its
``col::text`` (§2.2) — is one row of :data:`TYPE_MAP`; the README's "Type mapping" table is that
table. No I/O and no pyarrow here (contracts load without either).

Read modes:

* ``binary`` — the typed value through ADBC's binary COPY; ``col::text`` is rendered in the
  pipeline (:mod:`bronze_assets.lib.enrich.pgtext`, vectorised, bit for bit).
* ``text`` — PostgreSQL renders ``col::text`` in the extraction query; that text is both what
  bronze stores (a string) and what the hash digests. For types Delta has no type for, or whose
  binary form ADBC reads lossily (``time`` 24:00:00 → 00:00, a 2-D array flattened, timetz/inet
  as opaque bytes, numeric without a precision wider than decimal(38)).
* ``parsed`` — PostgreSQL renders ``col::text`` (hashed as is); the stored value is parsed from
  it, exactly: the shortest round-trip digits of ``real``/``double precision`` (with
  ``extra_float_digits = 1``) parse back to the same float; ``money`` under ``lc_monetary = 'C'``
  (``-$1,234.56``) to decimal(19,2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import ClassVar


class TypeFamily(StrEnum):
    """What a PostgreSQL type is, for loading (a domain is its base type's family)."""

    SMALLINT = "smallint"
    INTEGER = "integer"
    BIGINT = "bigint"
    NUMERIC = "numeric"
    REAL = "real"
    DOUBLE = "double precision"
    BOOLEAN = "boolean"
    TEXT = "text"
    VARCHAR = "character varying"
    CHAR = "character"
    CITEXT = "citext"
    DATE = "date"
    TIMESTAMP = "timestamp without time zone"
    TIMESTAMPTZ = "timestamp with time zone"
    TIME = "time without time zone"
    TIMETZ = "time with time zone"
    INTERVAL = "interval"
    UUID = "uuid"
    JSON = "json"
    JSONB = "jsonb"
    BYTEA = "bytea"
    MONEY = "money"
    INET = "inet"
    CIDR = "cidr"
    MACADDR = "macaddr"
    MACADDR8 = "macaddr8"
    ENUM = "enum"
    ARRAY = "array"
    OTHER = "other"


class ReadMode(StrEnum):
    """How extraction reads a column (see the module docstring)."""

    BINARY = "binary"
    TEXT = "text"
    PARSED = "parsed"


@dataclass(frozen=True)
class TypeMapping:
    """One row of the mapping table."""

    delta: str  # the Delta (Spark SQL) type bronze stores; "decimal" takes the column's (p, s)
    read: ReadMode
    hash_text: str  # how record_hash renders col::text (documentation, rendered in the README)


_PG = "PostgreSQL's `col::text` from the query"
_FLOAT = f"{_PG} (shortest round-trip digits, `NaN`, `Infinity`)"
_OUTSIDE = "outside years 1–9999: NULL in bronze, quarantined"
TYPE_MAP: dict[TypeFamily, TypeMapping] = {
    TypeFamily.SMALLINT: TypeMapping("short", ReadMode.BINARY, "decimal digits"),
    TypeFamily.INTEGER: TypeMapping("integer", ReadMode.BINARY, "decimal digits"),
    TypeFamily.BIGINT: TypeMapping("long", ReadMode.BINARY, "decimal digits"),
    TypeFamily.NUMERIC: TypeMapping(
        "decimal", ReadMode.BINARY,
        "digits with exactly `s` fraction digits, `NaN`/`Infinity` (NULL in bronze, quarantined); "
        f"without a precision, or p > 38: string, {_PG}"),
    TypeFamily.REAL: TypeMapping("float", ReadMode.PARSED, _FLOAT),
    TypeFamily.DOUBLE: TypeMapping("double", ReadMode.PARSED, _FLOAT),
    TypeFamily.BOOLEAN: TypeMapping("boolean", ReadMode.BINARY, "`true` / `false` (the cast, not `t`/`f`)"),
    TypeFamily.TEXT: TypeMapping("string", ReadMode.BINARY, "the text itself (length in characters)"),
    TypeFamily.VARCHAR: TypeMapping("string", ReadMode.BINARY, "the text itself"),
    TypeFamily.CHAR: TypeMapping(
        "string", ReadMode.BINARY, "trailing spaces removed (bronze stores the padded value)"),
    TypeFamily.CITEXT: TypeMapping("string", ReadMode.TEXT, _PG),
    TypeFamily.DATE: TypeMapping(
        "date", ReadMode.BINARY, f"`YYYY-MM-DD[ BC]`, `infinity` ({_OUTSIDE})"),
    TypeFamily.TIMESTAMP: TypeMapping(
        "timestamp_ntz", ReadMode.BINARY,
        f"`YYYY-MM-DD HH:MI:SS[.ffffff][ BC]` ({_OUTSIDE})"),
    TypeFamily.TIMESTAMPTZ: TypeMapping(
        "timestamp", ReadMode.BINARY,
        f"`YYYY-MM-DD HH:MI:SS[.ffffff]+00[ BC]` in UTC ({_OUTSIDE})"),
    TypeFamily.TIME: TypeMapping("string", ReadMode.TEXT, f"{_PG} (`24:00:00` kept)"),
    TypeFamily.TIMETZ: TypeMapping("string", ReadMode.TEXT, f"{_PG} (its own offset)"),
    TypeFamily.INTERVAL: TypeMapping("string", ReadMode.TEXT, f"{_PG} (IntervalStyle `postgres`)"),
    TypeFamily.UUID: TypeMapping("string", ReadMode.TEXT, _PG),
    TypeFamily.JSON: TypeMapping("string", ReadMode.TEXT, f"{_PG} (the input text, as is)"),
    TypeFamily.JSONB: TypeMapping("string", ReadMode.TEXT, f"{_PG} (normalised)"),
    TypeFamily.BYTEA: TypeMapping("binary", ReadMode.BINARY, "`\\x` + lowercase hex (bytea_output `hex`)"),
    TypeFamily.MONEY: TypeMapping("decimal(19,2)", ReadMode.PARSED, f"{_PG} (lc_monetary `C`: `-$1,234.56`)"),
    TypeFamily.INET: TypeMapping("string", ReadMode.TEXT, _PG),
    TypeFamily.CIDR: TypeMapping("string", ReadMode.TEXT, _PG),
    TypeFamily.MACADDR: TypeMapping("string", ReadMode.TEXT, _PG),
    TypeFamily.MACADDR8: TypeMapping("string", ReadMode.TEXT, _PG),
    TypeFamily.ENUM: TypeMapping("string", ReadMode.TEXT, f"{_PG} (the label)"),
    TypeFamily.ARRAY: TypeMapping(
        "string", ReadMode.TEXT,
        f"{_PG} (`{{1,NULL,3}}`, `{{{{1,2}},{{3,4}}}}`, `[0:1]={{a,b}}`: any dimensions)"),
    TypeFamily.OTHER: TypeMapping(
        "string", ReadMode.TEXT, f"{_PG} (any other type, e.g. point, xml, tsvector)"),
}

MAX_DECIMAL_PRECISION = 38  # Delta's (and Arrow decimal128's) limit

_SIMPLE = {f.value: f for f in TypeFamily if f not in (TypeFamily.ENUM, TypeFamily.ARRAY, TypeFamily.OTHER)}
# format_type spellings with a typmod: "numeric(18,4)", "character varying(20)", "timestamp(3) with time
# zone", "time(0) without time zone", "interval year to month", "interval(3)", "bit(3)"
_TYPMOD = re.compile(r"^(?P<head>[a-z ]+?)(?:\((?P<args>[0-9, -]+)\))?(?P<tail>( with(out)? time zone)?)$")


@dataclass(frozen=True)
class PgType:
    """A column's declared PostgreSQL type: its ``format_type`` spelling, family and parameters.

    ``base`` is a domain's base type spelling (the extraction reads the column cast to it).
    Build one with :meth:`parse`; the constants below are today's contract types.
    """

    spelling: str
    family: TypeFamily
    precision: int | None = None
    scale: int | None = None
    base: str | None = None

    INTEGER: ClassVar[PgType]
    BIGINT: ClassVar[PgType]
    TEXT: ClassVar[PgType]
    DATE: ClassVar[PgType]
    TIMESTAMPTZ: ClassVar[PgType]
    NUMERIC_10_2: ClassVar[PgType]
    NUMERIC_12_2: ClassVar[PgType]

    @staticmethod
    @lru_cache(maxsize=4096)
    def parse(spelling: str, kind: str = "b", base: str | None = None) -> PgType:
        """The type ``format_type`` spells ``spelling``; ``kind`` is ``pg_type.typtype`` (``e``
        enum, ``d`` domain with ``base`` its base type's spelling, anything else by spelling)."""
        if kind == "d" and base is not None:
            inner = PgType.parse(base)
            return PgType(spelling, inner.family, inner.precision, inner.scale, base)
        if kind == "e":
            return PgType(spelling, TypeFamily.ENUM)
        if spelling.endswith("[]"):
            return PgType(spelling, TypeFamily.ARRAY)
        if spelling in _SIMPLE:
            return PgType(spelling, _SIMPLE[spelling])
        match = _TYPMOD.match(spelling)
        if match is None:
            return PgType(spelling, TypeFamily.OTHER)
        head, args, tail = match["head"], match["args"], match["tail"]
        if head == "numeric" and args:
            p, _, s = args.partition(",")
            return PgType(spelling, TypeFamily.NUMERIC, int(p), int(s or 0))
        if head.startswith("interval"):
            return PgType(spelling, TypeFamily.INTERVAL)
        family = _SIMPLE.get(f"{head}{tail}")
        return PgType(spelling, family or TypeFamily.OTHER)

    @property
    def value(self) -> str:
        """The ``format_type`` spelling (what the live catalog shows; valid in DDL and casts)."""
        return self.spelling

    def __str__(self) -> str:
        return self.spelling

    @property
    def mapping(self) -> TypeMapping:
        if self.family is TypeFamily.NUMERIC and not self.is_numeric:
            return TypeMapping("string", ReadMode.TEXT, TYPE_MAP[TypeFamily.NUMERIC].hash_text)
        return TYPE_MAP[self.family]

    @property
    def read(self) -> ReadMode:
        return self.mapping.read

    @property
    def delta_type(self) -> str:
        """The Delta type bronze stores the column as (``decimal(p,s)`` with the column's own)."""
        delta = self.mapping.delta
        return f"decimal({self.precision},{self.scale})" if delta == "decimal" else delta

    @property
    def is_numeric(self) -> bool:
        """A numeric stored as decimal(p, s): declared with a precision Delta can hold."""
        return (self.family is TypeFamily.NUMERIC and self.precision is not None and self.scale is not None
                and 0 < self.precision <= MAX_DECIMAL_PRECISION and 0 <= self.scale <= self.precision)

    @property
    def precision_scale(self) -> tuple[int, int] | None:
        """(precision, scale) of a numeric stored as decimal, else None."""
        if not self.is_numeric:
            return None
        assert self.precision is not None and self.scale is not None
        return self.precision, self.scale

    @property
    def storage_note(self) -> str | None:
        """How bronze stores a column of this type when not as the type itself (None: as itself)."""
        if self.read is ReadMode.TEXT:
            return f"{self.spelling} is stored as string (PostgreSQL's text of the value)"
        if self.family is TypeFamily.MONEY:
            return "money is stored as decimal(19,2) (its text under lc_monetary 'C')"
        return None

    @property
    def is_integer(self) -> bool:
        return self.family in (TypeFamily.SMALLINT, TypeFamily.INTEGER, TypeFamily.BIGINT)

    @property
    def is_text(self) -> bool:
        """Stored as a string (a text type, or PostgreSQL's text of a type Delta lacks)."""
        return self.delta_type == "string"


PgType.INTEGER = PgType.parse("integer")
PgType.BIGINT = PgType.parse("bigint")
PgType.TEXT = PgType.parse("text")
PgType.DATE = PgType.parse("date")
PgType.TIMESTAMPTZ = PgType.parse("timestamp with time zone")
PgType.NUMERIC_10_2 = PgType.parse("numeric(10,2)")
PgType.NUMERIC_12_2 = PgType.parse("numeric(12,2)")


def type_notes(table: str, columns: Iterable[tuple[str, PgType]]) -> list[str]:
    """One line per column bronze does not store as its own type, naming the table (e.g.
    ``schema.table``), the column and the documented mapping (README "Type mapping")."""
    return [f"{table}.{name}: {t.storage_note}" for name, t in columns if t.storage_note is not None]
