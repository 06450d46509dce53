"""The typed table contract: the single source of truth every pipeline step derives from."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from bronze_assets.contracts.types import PgType  # the column types (and their mapping) live there

# A table without a primary key loads as a full snapshot and its rows are identified by content:
# ``record_key`` = ``<record_hash>#<n>``, n = 1, 2, … numbering the identical rows of one snapshot
# (identical rows cannot be told apart, so n copies are h#1..h#n). It is the MERGE key of such a
# table, a metadata column of such tables only (README "Your own database", "No primary key").
# A landing table without one appends its records, each identified by ``<file URI>#<line>``.
ROW_KEY = "record_key"
ROW_KEY_SEPARATOR = "#"


class LoadPattern(StrEnum):
    """How a table is brought into bronze (ARCHITECTURE §2.5)."""

    FULL = "full"
    INCREMENTAL = "incremental"
    BATCH = "batch"


class Cadence(StrEnum):
    """How often a table is loaded (ARCHITECTURE §2.5)."""

    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


class TypeChangePolicy(StrEnum):
    """What a load does when a source column's type no longer matches the contract.

    ``fail`` (default): the batch goes to ``bz_quarantine`` and the run fails (blocking check).
    ``rescue``: for semi-structured sources (e.g. a column turned into text/jsonb) every value is
    read per record; a value that cannot be read as the contract type becomes NULL, its record
    scores the −40 schema penalty and its raw value is listed in ``bz_quarantine``.
    """

    FAIL = "fail"
    RESCUE = "rescue"


class PartitionKind(StrEnum):
    """Dagster partitioning of a bronze asset (ARCHITECTURE §2.4)."""

    NONE = "none"
    DAILY_LOAD_DATE = "daily"
    MONTHLY_BUSINESS_DATE = "monthly"


@dataclass(frozen=True)
class Partitioning:
    """Delta partition column and the Dagster partitions that match it."""

    kind: PartitionKind = PartitionKind.NONE
    delta_column: str | None = None
    business_date_column: str | None = None

    @classmethod
    def none(cls) -> Partitioning:
        return cls()

    @classmethod
    def daily_load_date(cls) -> Partitioning:
        return cls(PartitionKind.DAILY_LOAD_DATE, "load_date")

    @classmethod
    def monthly_on(cls, business_date_column: str, delta_column: str) -> Partitioning:
        return cls(PartitionKind.MONTHLY_BUSINESS_DATE, delta_column, business_date_column)


@dataclass(frozen=True)
class Column:
    """One source column: its name (as the catalog spells it) and declared PostgreSQL type."""

    name: str
    type: PgType
    nullable: bool = True


@dataclass(frozen=True)
class RegexRule:
    """Format rule: non-NULL values must fully match ``pattern`` (POSIX/RE2-compatible)."""

    column: str
    pattern: str


@dataclass(frozen=True)
class ValueSetRule:
    """Format rule: non-NULL values must be one of ``values`` (case-sensitive)."""

    column: str
    values: tuple[str, ...]


class Comparison(StrEnum):
    GE = ">="
    GT = ">"


@dataclass(frozen=True)
class RangeRule:
    """Range rule: non-NULL values must satisfy ``column <op> bound``."""

    column: str
    op: Comparison
    bound: float


@dataclass(frozen=True)
class NotAfterLoadDateRule:
    """Range rule: a business date may not lie after the date of the load."""

    column: str


FormatRule = RegexRule | ValueSetRule
RangeRuleT = RangeRule | NotAfterLoadDateRule


@dataclass(frozen=True)
class ForeignKey:
    """Logical (unenforced) reference checked by the referential-integrity check."""

    column: str
    parent_table: str
    parent_column: str


@dataclass(frozen=True)
class QualityRules:
    """The §3 rules of one table: required (null), format and range rules."""

    required: tuple[str, ...] = ()
    formats: tuple[FormatRule, ...] = ()
    ranges: tuple[RangeRuleT, ...] = ()


class LandingFormat(StrEnum):
    """How the files of a landing table are written (ARCHITECTURE §2.6)."""

    JSON = "json"  # JSON Lines: one object per line
    CSV = "csv"
    PARQUET = "parquet"


class Evolution(StrEnum):
    """What a landing load does with a top-level field the table does not have (§2.6; Auto
    Loader's ``schemaEvolutionMode`` names)."""

    ADD_NEW_COLUMNS = "addNewColumns"  # a nullable column joins the table in the same run
    RESCUE = "rescue"  # the field goes to _rescued_data
    FAIL_ON_NEW_COLUMNS = "failOnNewColumns"  # the run fails naming file and fields, writes nothing
    NONE = "none"  # the field is ignored


@dataclass(frozen=True)
class Landing:
    """A landing-zone table (§2.6): its files are everything below ``$BRONZE_LANDING_ROOT/<name>/``.
    ``schema_hints``: column → type of fields the contract does not list (Auto Loader's
    ``schemaHints``)."""

    format: LandingFormat = LandingFormat.JSON
    schema_hints: tuple[tuple[str, str], ...] = ()
    infer_column_types: bool = True
    evolution: Evolution = Evolution.ADD_NEW_COLUMNS
    allow_overwrites: bool = False


@dataclass(frozen=True)
class Contract:
    """Everything the platform knows about one source table."""

    name: str
    description: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    load_pattern: LoadPattern
    cadence: Cadence
    partitioning: Partitioning
    zorder_columns: tuple[str, ...]
    quality: QualityRules = field(default_factory=QualityRules)
    foreign_keys: tuple[ForeignKey, ...] = ()
    pii_columns: tuple[str, ...] = ()  # personal data, access-controlled (lib/governance/access.py)
    encrypted_columns: tuple[str, ...] = ()  # PII stored as per-subject AEAD ciphertext
    data_subject: str | None = None  # column naming the person a row is about (erasure, keys)
    on_type_change: TypeChangePolicy = TypeChangePolicy.FAIL
    cdc: bool = False  # prefer log-based CDC (logical replication) when the source allows it
    history: bool = False  # keep every version of each key in bz_<name>_history (SCD type 2, §2.7)
    seed_rows: int = 0
    version: str = "1"
    # where the table lives in the source: its schema, and its own spelling of the table name when
    # that differs from ``name`` (a mixed-case or otherwise quoted identifier); the shipped example's
    # schema is ``tests``
    source_schema: str = "tests"
    source_table: str = ""
    landing: Landing | None = None  # set: the table's rows come from landing-zone files (§2.6)

    def __post_init__(self) -> None:
        names = self.column_names
        if len(set(names)) != len(names):
            raise ValueError(f"contract {self.name}: duplicate column names in {names}")
        if not set(self.primary_key) <= set(names):
            raise ValueError(f"contract {self.name}: primary key {self.primary_key} names unknown columns")
        if self.landing is not None:
            self._check_landing()
        elif "updated_at" not in names:
            raise ValueError(f"contract {self.name}: every source table needs updated_at")
        if self.keyless and self.landing is None:
            self._check_keyless()
        elif self.cdc and (len(self.primary_key) != 1 or self.column(self.primary_key[0]).type
                           not in (PgType.INTEGER, PgType.BIGINT)):
            raise ValueError(
                f"contract {self.name}: log-based CDC needs a single integer primary key (it takes the "
                f"changed rows' keys from the replication stream and re-reads those rows in one snapshot "
                f"by that one integer column); this table's is "
                f"({', '.join(f'{k} {self.column(k).type.value}' for k in self.primary_key)}): set "
                f"cdc: false, it loads by watermark on updated_at (or full)")
        referenced = [
            *self.zorder_columns,
            *self.pii_columns,
            *self.quality.required,
            *(r.column for r in self.quality.formats),
            *(r.column for r in self.quality.ranges),
            *(fk.column for fk in self.foreign_keys),
        ]
        if self.partitioning.business_date_column:
            referenced.append(self.partitioning.business_date_column)
        referenced += [*self.encrypted_columns, *([self.data_subject] if self.data_subject else [])]
        unknown = sorted(set(referenced) - set(names))
        if unknown:
            raise ValueError(f"contract {self.name}: rules name unknown columns {unknown}")
        self._check_encryption()

    def _check_landing(self) -> None:
        """Schema hints name fields the columns do not declare (a declared column has its type)."""
        assert self.landing is not None
        declared = sorted(set(self.column_names) & {name for name, _ in self.landing.schema_hints})
        if declared:
            raise ValueError(f"contract {self.name}: schema_hints name declared columns {declared}: a "
                             f"declared column has its type; hints type the fields the columns do not list")
        if ROW_KEY in self.column_names and self.keyless:
            raise ValueError(f"contract {self.name}: a field named {ROW_KEY} is the row identity of a "
                             f"landing table without a primary key: name the primary key, or rename it")

    def _check_keyless(self) -> None:
        """A table without a primary key loads only as a full snapshot (see :data:`ROW_KEY`)."""
        fix = "name the column(s) that identify a row in primary_key, or"
        if self.load_pattern is not LoadPattern.FULL or self.partitioning.kind is not PartitionKind.NONE:
            raise ValueError(f"contract {self.name}: a table without a primary key loads as a full snapshot: "
                             f"{fix} set load_pattern: full and partitioning: none")
        if self.cdc:
            raise ValueError(f"contract {self.name}: log-based CDC needs a single integer primary key "
                             f"(a table without one loads as a full snapshot): {fix} set cdc: false")
        if self.encrypted_columns:
            raise ValueError(f"contract {self.name}: encrypted_columns need a primary key (their data "
                             f"subject's key is written by key): {fix} keep them pii_columns only")
        if ROW_KEY in self.column_names:
            raise ValueError(f"contract {self.name}: the source has a column {ROW_KEY}, the name of the "
                             f"row identity of a table without a primary key: name the column(s) that "
                             f"identify a row in primary_key")

    def _check_encryption(self) -> None:
        if not self.encrypted_columns:
            return
        if not set(self.encrypted_columns) <= set(self.pii_columns):
            raise ValueError(f"contract {self.name}: encrypted_columns must also be pii_columns")
        if self.data_subject is None or self.data_subject in self.encrypted_columns:
            raise ValueError(
                f"contract {self.name}: encrypted_columns need a data_subject column (kept in clear)"
            )
        not_text = [c for c in self.encrypted_columns if self.column(c).type != PgType.TEXT]
        if not_text:
            raise ValueError(f"contract {self.name}: only text columns can be encrypted, not {not_text}")

    @property
    def keyless(self) -> bool:
        """No primary key: a full snapshot (or a landing table's appended records) whose rows are
        identified by :data:`ROW_KEY`."""
        return not self.primary_key

    @property
    def merge_key(self) -> tuple[str, ...]:
        """The bronze table's key: the primary key, or :data:`ROW_KEY` for a keyless table."""
        return self.primary_key or (ROW_KEY,)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def source_name(self) -> str:
        """The table's name in the source, as the catalog spells it (quote it with ``quote_ident``)."""
        return self.source_table or self.name

    @property
    def source_ref(self) -> str:
        """``schema.table`` for messages and metadata (not SQL: use ``qualified`` there)."""
        return f"{self.source_schema}.{self.source_name}"

    @property
    def bronze_table(self) -> str:
        """Name of the bronze Delta table and of the Dagster asset."""
        return f"bz_{self.name}"

    @property
    def history_table(self) -> str:
        """Name of the table (and asset) holding every version of each key (§2.7, when ``history``)."""
        return f"{self.bronze_table}_history"

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"contract {self.name} has no column {name!r}")
