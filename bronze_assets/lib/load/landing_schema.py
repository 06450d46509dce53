"""The stored schema of a landing table (ARCHITECTURE §2.6): what Auto Loader keeps in its
``schemaLocation``, kept by the local engine at ``$BRONZE_ROOT/_schemas/bz_<name>/``, one JSON file
per version (``00000.json``, ``00001.json`` …; the highest is current).

A version lists every column of the table in order with its PostgreSQL type and where the type
came from: ``contract`` (declared), ``hint`` (the contract's ``schema_hints``), ``inferred``
(``infer_column_types``: from the values of the first file that had the field) or ``text``
(inference off: every new field is text, as Auto Loader's default). Once stored, a column's type
never changes; a value that does not parse as it is rescued (§2.6).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from bronze_assets.contracts import Contract
from bronze_assets.contracts.types import PgType
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load.landing_records import evolved_columns

SCHEMAS_FOLDER = "_schemas"
CONTRACT, HINT, INFERRED, TEXT = "contract", "hint", "inferred", "text"

# the types a new CSV field is tried as, in order (its values are all text): the first all its values cast to
TEXT_CASTS = ("bigint", "double precision", "boolean", "timestamp with time zone")
# what a JSON value's type (DuckDB's json_type) says a new field is, with inference on
_JSON_TYPES = {"BIGINT": "bigint", "UBIGINT": "bigint", "DOUBLE": "double precision", "BOOLEAN": "boolean",
               "VARCHAR": "text", "OBJECT": "jsonb", "ARRAY": "jsonb"}


@dataclass(frozen=True)
class StoredColumn:
    name: str
    type: str  # PostgreSQL spelling
    origin: str  # contract | hint | inferred | text

    @property
    def pg_type(self) -> PgType:
        return PgType.parse(self.type)


@dataclass(frozen=True)
class StoredSchema:
    """One version of a landing table's schema."""

    version: int
    columns: tuple[StoredColumn, ...]
    batch_id: str = ""

    def added(self, contract: Contract) -> list[StoredColumn]:
        """The columns loads added to the contract's (in table order)."""
        declared = set(contract.column_names)
        return [c for c in self.columns if c.name not in declared]

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "batch_id": self.batch_id,
                           "written_at": datetime.now(UTC).isoformat(),
                           "columns": [{"name": c.name, "type": c.type, "origin": c.origin}
                                       for c in self.columns]}, indent=1)


def schema_folder(contract: Contract) -> str:
    """The schema folder of ``contract`` under the bronze root (Auto Loader's ``schemaLocation``)."""
    return f"{SCHEMAS_FOLDER}/{contract.bronze_table}"


def schema_location(storage: Storage, contract: Contract) -> str:
    """The URI of the schema folder (what the Spark engine passes as ``cloudFiles.schemaLocation``)."""
    return f"{storage.root}/{schema_folder(contract)}"


def read_schema(storage: Storage, contract: Contract) -> StoredSchema | None:
    """The current stored schema of ``contract``, or None before its first load."""
    names = [posixpath.basename(p) for p in storage.list_files(schema_folder(contract))]
    versions = sorted(int(n.removesuffix(".json")) for n in names if n.endswith(".json")
                      and n.removesuffix(".json").isdigit())
    if not versions:
        return None
    raw = storage.read_file(f"{schema_folder(contract)}/{versions[-1]:05d}.json")
    if raw is None:
        return None
    doc = json.loads(raw)
    return StoredSchema(int(doc["version"]), tuple(StoredColumn(c["name"], c["type"], c["origin"])
                                                   for c in doc["columns"]), doc.get("batch_id", ""))


def write_schema(storage: Storage, contract: Contract, added: list[StoredColumn], batch_id: str,
                 previous: StoredSchema | None) -> StoredSchema:
    """Store the next version: the contract's columns, then ``added`` (the columns loads added,
    the earlier ones first)."""
    columns = tuple(StoredColumn(c.name, c.type.value, CONTRACT) for c in contract.columns) + tuple(added)
    schema = StoredSchema(0 if previous is None else previous.version + 1, columns, batch_id)
    storage.write_file(f"{schema_folder(contract)}/{schema.version:05d}.json", schema.to_json().encode())
    return schema


def new_column(contract: Contract, name: str, json_types: set[str], text_values_cast: dict[str, bool] | None
               ) -> StoredColumn:
    """The column a new field becomes: its schema hint, else (``infer_column_types``) the type its
    values show — ``json_types``: DuckDB's ``json_type`` of its non-null JSON values; CSV values are
    all text, so ``text_values_cast`` says which types every value casts to — else text."""
    landing = contract.landing
    assert landing is not None
    hints = dict(landing.schema_hints)
    if name in hints:
        return StoredColumn(name, PgType.parse(hints[name]).value, HINT)
    if not landing.infer_column_types:
        return StoredColumn(name, "text", TEXT)
    if text_values_cast is not None:
        found = next((t for t in TEXT_CASTS if text_values_cast.get(t)), "text")
        return StoredColumn(name, found, INFERRED)
    kinds = {_JSON_TYPES.get(t, "text") for t in json_types if t != "NULL"}
    if kinds == {"bigint", "double precision"}:
        kinds = {"double precision"}
    return StoredColumn(name, kinds.pop() if len(kinds) == 1 else "text", INFERRED)


def evolved_types(contract: Contract, storage: Storage, table_schema: pa.Schema | None
                  ) -> tuple[StoredSchema | None, list[StoredColumn]]:
    """The stored schema, and the columns earlier loads added to the contract's with their types:
    the stored schema's, then any the table (``table_schema``, None: none yet) has beyond them —
    a table landed before schemas were stored: text."""
    stored = read_schema(storage, contract)
    added = stored.added(contract) if stored is not None else []
    known = {c.name for c in added}
    added += [StoredColumn(c, "text", TEXT) for c in evolved_columns(contract, table_schema)
              if c not in known]
    return stored, added
