"""The tables file: a ``BronzeTables`` component's ``defs.yaml`` (ARCHITECTURE §2.10).

One file names a source (the environment variable holding its DSN, its schemas, which tables) and,
per table, the business overlay (primary key, load pattern, cadence, partitioning, Z-order, PII,
quality rules, foreign keys) plus the columns and types discovered from the catalog, recorded in
the file so definitions load without a database. This module is the file's one schema (pydantic
models, also the component's attribute schema), its one parser (:func:`contracts_of`, file →
:class:`~bronze_assets.contracts.model.Contract`) and its one writer (:func:`render`, used by
``bronze init`` and to write the shipped example). No Dagster and no database here.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from bronze_assets.contracts.model import (
    Cadence,
    Column,
    Comparison,
    Contract,
    Evolution,
    ForeignKey,
    Landing,
    LandingFormat,
    LoadPattern,
    NotAfterLoadDateRule,
    Partitioning,
    PartitionKind,
    QualityRules,
    RangeRule,
    RegexRule,
    TypeChangePolicy,
    ValueSetRule,
)
from bronze_assets.contracts.types import PgType, TypeFamily

COMPONENT_TYPE = "bronze_assets.BronzeTables"
LANDING_COMPONENT_TYPE = "bronze_assets.LandingFiles"  # the same table specs, each with ``landing`` set
DEFAULT_DSN_ENV = "BRONZE_SOURCE_DSN"
BRONZE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")  # bz_<name> is a Dagster asset key and a Delta folder
# pg_type.typtype as the file spells it (base types are the default and not written)
KINDS = {"b": "base", "e": "enum", "d": "domain", "c": "composite", "r": "range", "m": "multirange",
         "p": "pseudo"}
_KIND_CODES = {v: k for k, v in KINDS.items()}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_KIND_MARK = re.compile(r" \((?P<kind>enum|composite|range|multirange|pseudo|domain over (?P<base>.+))\)$")


@dataclass(frozen=True)
class ColumnSpec:
    """A column as the catalog describes it. The file writes it as one ``name: text`` entry, the
    text being ``<format_type>[ not null][ (enum) | (domain over <base type>) | (composite) …]``,
    e.g. ``character varying(200) not null`` (one YAML scalar per column keeps a file of hundreds
    of tables quick to load)."""

    name: str
    type: str  # format_type(atttypid, atttypmod)
    nullable: bool = True
    kind: str = "base"  # base, enum, domain, composite, range, multirange, pseudo
    base: str | None = None  # a domain's base type (format_type)

    @property
    def text(self) -> str:
        mark = f" (domain over {self.base})" if self.kind == "domain" else \
            "" if self.kind == "base" else f" ({self.kind})"
        return f"{self.type}{'' if self.nullable else ' not null'}{mark}"

    @classmethod
    def parse(cls, name: str, text: str) -> ColumnSpec:
        kind, base = "base", None
        if m := _KIND_MARK.search(text):
            text = text[: m.start()]
            kind, base = ("domain", m["base"]) if m["base"] else (m["kind"], None)
        nullable = not text.endswith(" not null")
        spelling = text if nullable else text[: -len(" not null")]
        if not spelling.strip():
            raise ValueError(f"column {name!r} has no type")
        return cls(name, spelling.strip(), nullable, kind, base)


class FormatSpec(_Spec):
    """A format rule: ``regex`` (full match) or ``values`` (one of), on non-NULL values."""

    column: str
    regex: str | None = None
    values: list[str] | None = None


class QualitySpec(_Spec):
    """The §3 rules: required columns (null rule), format rules and range rules
    (``"<column> >= <number>"``, ``"<column> > <number>"``, ``"<column> <= load_date"``)."""

    required: list[str] = []
    formats: list[FormatSpec] = []
    ranges: list[str] = []


class MonthlySpec(_Spec):
    """Monthly Dagster partitions on a business date; ``column`` is the Delta partition column."""

    monthly: str
    column: str


class LandingSpec(_Spec):
    """A landing-zone table's files (ARCHITECTURE §2.6); Auto Loader's options by the same meaning."""

    format: Literal["json", "csv", "parquet"] = "json"
    schema_hints: dict[str, str] = Field(default={}, description="column: PostgreSQL type of fields "
                                                                 "the columns do not list")
    infer_column_types: bool = True
    evolution: Literal["addNewColumns", "rescue", "failOnNewColumns", "none"] = "addNewColumns"
    allow_overwrites: bool = False


class TableSpec(_Spec):
    """One table: where it lives, the overlay, and the discovered columns."""

    schema_: str | None = Field(default=None, alias="schema",
                                description="source schema (default: the source's first schema)")
    table: str | None = Field(default=None, description="the source's spelling, when it is not the name")
    description: str | None = None
    skip: str | None = Field(default=None, description="why this table is not loaded (no asset is built)")
    primary_key: list[str] = Field(description="the column(s) that identify a row; [] (none): a full "
                                               "snapshot, rows identified by content (record_key)")
    load_pattern: Literal["full", "incremental", "batch"] = "full"
    cadence: Literal["hourly", "daily", "weekly", "monthly"] = "daily"
    partitioning: Literal["none", "daily"] | MonthlySpec = "none"
    zorder_columns: list[str] = []
    pii_columns: list[str] = []
    encrypted_columns: list[str] = []
    data_subject: str | None = None
    quality: QualitySpec = QualitySpec()
    foreign_keys: list[str] = Field(default=[], description='"<column> -> <table>.<column>"')
    cdc: bool = False
    history: bool = Field(default=False, description="keep every version of each key in "
                                                     "bz_<name>_history (SCD type 2)")
    on_type_change: Literal["fail", "rescue"] = "fail"
    seed_rows: int = 0
    version: str = "1"
    landing: LandingSpec | None = Field(default=None, description="set: the rows come from files "
                                                                  "(a LandingFiles component)")
    columns: dict[str, str] = Field(description="name: <format_type>[ not null][ (enum) | (domain over "
                                                "<base>)], in column order (discovered by bronze init)")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def column_specs(self) -> list[ColumnSpec]:
        return [ColumnSpec.parse(name, text) for name, text in self.columns.items()]


class SourceSpec(_Spec):
    """The source: the environment variable that holds its DSN, its schemas, and the tables
    ``bronze init --refresh`` discovers (names or globs, ``table`` or ``schema.table``)."""

    dsn_env: str = DEFAULT_DSN_ENV
    schemas: list[str] = ["public"]
    tables: list[str] = ["*"]
    exclude: list[str] = []


class TablesFile(_Spec):
    """The attributes of a ``BronzeTables`` component."""

    source: SourceSpec = SourceSpec()
    name: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]*$",
                             description="prefix of this file's jobs and schedules")
    tables: dict[str, TableSpec] = {}


# ---------------------------------------------------------------------------------------------
# file -> contracts


_RANGE = re.compile(r"^\s*(?P<col>\S+)\s*(?P<op>>=|>)\s*(?P<bound>[-+0-9.eE]+)\s*$")
_NOT_AFTER = re.compile(r"^\s*(?P<col>\S+)\s*<=\s*load_date\s*$")
_FK = re.compile(r"^\s*(?P<col>\S+)\s*->\s*(?P<table>[^.\s]+)\.(?P<parent>\S+)\s*$")


def _range(text: str) -> RangeRule | NotAfterLoadDateRule:
    if m := _NOT_AFTER.match(text):
        return NotAfterLoadDateRule(m["col"])
    if m := _RANGE.match(text):
        bound = float(m["bound"])
        return RangeRule(m["col"], Comparison(m["op"]), int(bound) if bound.is_integer() else bound)
    raise ValueError(f"range rule {text!r}: write '<column> >= <number>', '<column> > <number>' "
                     f"or '<column> <= load_date'")


def _format(spec: FormatSpec) -> RegexRule | ValueSetRule:
    if (spec.regex is None) == (spec.values is None):
        raise ValueError(f"format rule on {spec.column!r}: give exactly one of regex or values")
    if spec.regex is not None:
        re.compile(spec.regex)
        return RegexRule(spec.column, spec.regex)
    return ValueSetRule(spec.column, tuple(spec.values or ()))


def _foreign_key(text: str) -> ForeignKey:
    m = _FK.match(text)
    if m is None:
        raise ValueError(f"foreign key {text!r}: write '<column> -> <table>.<column>'")
    return ForeignKey(m["col"], m["table"], m["parent"])


def _partitioning(spec: TableSpec) -> Partitioning:
    if isinstance(spec.partitioning, MonthlySpec):
        return Partitioning.monthly_on(spec.partitioning.monthly, spec.partitioning.column)
    return Partitioning.daily_load_date() if spec.partitioning == "daily" else Partitioning.none()


def column_type(column: ColumnSpec) -> PgType:
    return PgType.parse(column.type, _KIND_CODES[column.kind], column.base)


def contract_of(name: str, spec: TableSpec, source: SourceSpec) -> Contract:
    """The contract of table ``name`` of a file (raises ValueError naming the table)."""
    try:
        if not BRONZE_NAME.match(name):
            raise ValueError("a table's name is its bronze name (asset bz_<name>): lowercase letters, "
                             "digits and _; put the source's spelling in 'table'")
        schema = spec.schema_ or source.schemas[0]
        table = spec.table or name
        return Contract(
            name=name,
            description=spec.description or f"{schema}.{table} (discovered from the catalog)",
            columns=tuple(Column(c.name, column_type(c), c.nullable) for c in spec.column_specs),
            primary_key=tuple(spec.primary_key),
            load_pattern=LoadPattern(spec.load_pattern),
            cadence=Cadence(spec.cadence),
            partitioning=_partitioning(spec),
            zorder_columns=tuple(spec.zorder_columns),
            quality=QualityRules(
                required=tuple(spec.quality.required),
                formats=tuple(_format(f) for f in spec.quality.formats),
                ranges=tuple(_range(r) for r in spec.quality.ranges),
            ),
            foreign_keys=tuple(_foreign_key(f) for f in spec.foreign_keys),
            pii_columns=tuple(spec.pii_columns),
            encrypted_columns=tuple(spec.encrypted_columns),
            data_subject=spec.data_subject,
            on_type_change=TypeChangePolicy(spec.on_type_change),
            cdc=spec.cdc,
            history=spec.history,
            seed_rows=spec.seed_rows,
            version=spec.version,
            source_schema=schema,
            source_table="" if table == name else table,
            landing=_landing(spec.landing),
        )
    except ValueError as exc:
        raise ValueError(f"table {name}: {exc}") from None


def _landing(spec: LandingSpec | None) -> Landing | None:
    if spec is None:
        return None
    for text in spec.schema_hints.values():
        PgType.parse(text)  # an unknown type is an error naming it
    return Landing(LandingFormat(spec.format), tuple(spec.schema_hints.items()), spec.infer_column_types,
                   Evolution(spec.evolution), spec.allow_overwrites)


def contracts_of(file: TablesFile) -> list[Contract]:
    """The contracts of every table the file loads (a table with ``skip`` set is left out)."""
    return [contract_of(name, spec, file.source) for name, spec in file.tables.items() if spec.skip is None]


def skipped_of(file: TablesFile) -> dict[str, str]:
    """The tables the file lists but does not load, with the reason."""
    return {name: spec.skip for name, spec in file.tables.items() if spec.skip is not None}


def parse_document(document: dict, where: str = "the tables file") -> TablesFile:
    """The attributes of a parsed ``defs.yaml`` document whose type is ``BronzeTables``."""
    try:
        return TablesFile.model_validate(document.get("attributes") or {})
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _documents(path: Path) -> list[dict]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.load_all(f, Loader=loader) if isinstance(d, dict)]


def read_file(path: Path) -> TablesFile:
    """The (first) ``BronzeTables`` component of ``path``."""
    for document in _documents(path):
        if document.get("type") == COMPONENT_TYPE:
            return parse_document(document, str(path))
    raise ValueError(f"{path}: no component of type {COMPONENT_TYPE}")


def table_files(defs_dir: Path, component: str = COMPONENT_TYPE) -> list[Path]:
    """Every ``defs.yaml`` under ``defs_dir`` that declares a ``component`` (default ``BronzeTables``)."""
    found = []
    for path in sorted(defs_dir.rglob("defs.y*ml")):
        if path.suffix in (".yaml", ".yml") and component in path.read_text(encoding="utf-8"):
            found.append(path)
    return found


def load_contracts(paths: Iterable[Path], component: str = COMPONENT_TYPE,
                   parents: Iterable[str] = ()) -> tuple[Contract, ...]:
    """The contracts of every ``component`` (``BronzeTables`` or ``LandingFiles``) in ``paths``, in
    file order (a bronze name declared twice, or a foreign key to a table no file declares — nor
    ``parents`` — is an error naming the file)."""
    seen: dict[str, Path] = {}
    out: list[Contract] = []
    for path in paths:
        for document in _documents(path):
            if document.get("type") != component:
                continue
            for contract in contracts_of(parse_document(document, str(path))):
                if contract.name in seen:
                    raise ValueError(f"table {contract.name} is declared in {seen[contract.name]} and {path}")
                seen[contract.name] = path
                out.append(contract)
    for contract in out:
        for fk in contract.foreign_keys:
            if fk.parent_table not in seen and fk.parent_table not in set(parents):
                raise ValueError(f"{seen[contract.name]}: table {contract.name}: foreign key {fk.column} -> "
                                 f"{fk.parent_table}.{fk.parent_column} names no table of any tables file")
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# contracts -> file


def _range_text(rule: RangeRule | NotAfterLoadDateRule) -> str:
    if isinstance(rule, NotAfterLoadDateRule):
        return f"{rule.column} <= load_date"
    bound = rule.bound
    shown = str(int(bound)) if isinstance(bound, int | float) and math.isfinite(bound) and \
        float(bound).is_integer() else repr(float(bound))
    return f"{rule.column} {rule.op.value} {shown}"


def spec_of(contract: Contract, columns: Sequence[ColumnSpec] | None = None,
            default_schema: str | None = None) -> TableSpec:
    """The file entry of ``contract`` (``columns``: the catalog's, when known; else the contract's)."""
    part = contract.partitioning
    partitioning: Literal["none", "daily"] | MonthlySpec = "none"
    if part.kind is PartitionKind.DAILY_LOAD_DATE:
        partitioning = "daily"
    elif part.kind is PartitionKind.MONTHLY_BUSINESS_DATE:
        partitioning = MonthlySpec(monthly=part.business_date_column or "", column=part.delta_column or "")
    if columns is None:
        columns = [ColumnSpec(name=c.name, type=c.type.spelling, nullable=c.nullable, base=c.type.base,
                              kind="domain" if c.type.base else "enum" if c.type.family is TypeFamily.ENUM
                              else "base")
                   for c in contract.columns]
    return TableSpec(
        schema=None if contract.source_schema == default_schema else contract.source_schema,
        table=contract.source_table or None,
        description=contract.description,
        primary_key=list(contract.primary_key),
        load_pattern=contract.load_pattern.value,
        cadence=contract.cadence.value,
        partitioning=partitioning,
        zorder_columns=list(contract.zorder_columns),
        pii_columns=list(contract.pii_columns),
        encrypted_columns=list(contract.encrypted_columns),
        data_subject=contract.data_subject,
        quality=QualitySpec(
            required=list(contract.quality.required),
            formats=[FormatSpec(column=r.column, regex=r.pattern) if isinstance(r, RegexRule)
                     else FormatSpec(column=r.column, values=list(r.values))
                     for r in contract.quality.formats],
            ranges=[_range_text(r) for r in contract.quality.ranges],
        ),
        foreign_keys=[f"{fk.column} -> {fk.parent_table}.{fk.parent_column}" for fk in contract.foreign_keys],
        cdc=contract.cdc,
        history=contract.history,
        on_type_change=contract.on_type_change.value,
        seed_rows=contract.seed_rows,
        version=contract.version,
        columns={c.name: c.text for c in columns},
    )


def _flow(value: object) -> str:
    """``value`` as one line of YAML (flow style, quoted where YAML needs it)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False,
                          allow_unicode=True).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in text.splitlines()]


@dataclass(frozen=True)
class Note:
    """A comment ``bronze init`` writes above a table (regenerated by every refresh)."""

    table: str
    text: str


HEADER = """\
# Bronze tables (a Dagster component: bronze_assets.BronzeTables, README "Your own database").
# Review the overlay of each table; the columns are discovered from the catalog and recorded here so
# definitions load without a database. Refresh them (keeping your overlay) with
#   bronze init --refresh <this file>
# Range rules: '<column> >= <number>', '<column> > <number>', '<column> <= load_date';
# foreign keys: '<column> -> <table>.<column>'; partitioning: none | daily (load_date) |
# {monthly: <business date column>, column: <Delta partition column>}.
"""


def render(file: TablesFile, notes: Sequence[Note] = (), header: str = HEADER) -> str:
    """The ``defs.yaml`` text of ``file`` (one line per column, rule and key; ``notes`` as comments)."""
    by_table: dict[str, list[str]] = {}
    for note in notes:
        by_table.setdefault(note.table, []).append(note.text)
    src = file.source
    lines = [*header.rstrip("\n").splitlines(), f"type: {COMPONENT_TYPE}", "", "attributes:", "  source:",
             f"    dsn_env: {_flow(src.dsn_env)}", f"    schemas: {_flow(list(src.schemas))}",
             f"    tables: {_flow(list(src.tables))}"]
    if src.exclude:
        lines.append(f"    exclude: {_flow(list(src.exclude))}")
    if file.name:
        lines.append(f"  name: {_flow(file.name)}")
    lines.append("  tables:" + ("" if file.tables else " {}"))
    for name, spec in file.tables.items():
        lines.append("")
        for text in by_table.get(name, []):
            lines += _comment(text, "    ")
        lines.append(f"    {name}:")
        lines += _table_lines(spec, "      ")
    return "\n".join(lines) + "\n"


def _table_lines(spec: TableSpec, ind: str) -> list[str]:
    out: list[str] = []

    def put(key: str, value: object, default: object = None) -> None:
        if value != default:
            out.append(f"{ind}{key}: {_flow(value)}")

    put("schema", spec.schema_)
    put("table", spec.table)
    put("description", spec.description)
    put("skip", spec.skip)
    put("primary_key", list(spec.primary_key), None)
    put("load_pattern", spec.load_pattern)
    put("cadence", spec.cadence)
    part = spec.partitioning
    put("partitioning", part.model_dump() if isinstance(part, MonthlySpec) else part)
    put("zorder_columns", list(spec.zorder_columns), [])
    put("pii_columns", list(spec.pii_columns), [])
    put("encrypted_columns", list(spec.encrypted_columns), [])
    put("data_subject", spec.data_subject)
    q = spec.quality
    if q.required or q.formats or q.ranges:
        out.append(f"{ind}quality:")
        if q.required:
            out.append(f"{ind}  required: {_flow(list(q.required))}")
        if q.formats:
            out.append(f"{ind}  formats:")
            out += [f"{ind}    - {_flow(f.model_dump(exclude_none=True))}" for f in q.formats]
        if q.ranges:
            out.append(f"{ind}  ranges: {_flow(list(q.ranges))}")
    if spec.foreign_keys:
        out.append(f"{ind}foreign_keys:")
        out += [f"{ind}  - {_flow(fk)}" for fk in spec.foreign_keys]
    put("cdc", spec.cdc, False)
    put("history", spec.history, False)
    put("on_type_change", spec.on_type_change, "fail")
    put("seed_rows", spec.seed_rows, 0)
    put("version", spec.version, "1")
    out.append(f"{ind}columns:")
    for name, text in spec.columns.items():
        out.append(f"{ind}  {_flow(name)}: {_flow(text)}")
    return out


def matches(patterns: Sequence[str], schema: str, table: str) -> bool:
    """Whether ``schema.table`` matches one of ``patterns`` (``table`` or ``schema.table`` globs)."""
    return any(fnmatch.fnmatchcase(table, p) if "." not in p else fnmatch.fnmatchcase(f"{schema}.{table}", p)
               for p in patterns)
