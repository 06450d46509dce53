"""``--deep``: recompute each ACTIVE bronze row's §2.2 hash from its own columns (PII decrypted)
and report the rows whose stored ``record_hash`` no longer matches them: rows altered in bronze
after they were written. FORGOTTEN rows are skipped (their personal data is gone by design), and
so are DELETED ones (a soft delete keeps the row's last content; a repair does not rewrite it), and
rows with a value bronze could not store (kept as NULL, its text in ``bz_quarantine``)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from bronze_assets.contracts import Contract, ReadMode
from bronze_assets.lib.delta.quarantine import QUARANTINE_TABLE
from bronze_assets.lib.delta.query import query_tables, scan_columns
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.enrich.metadata import ACTIVE
from bronze_assets.lib.enrich.pgtext import record_hash
from bronze_assets.lib.governance.pii import decrypt_table
from bronze_assets.lib.reconcile.bronze_side import frames
from bronze_assets.lib.reconcile.keys import Key, by_integer_key, key_values
from bronze_assets.lib.reconcile.model import ALTERED, Mismatch

STATUS = "record_status"


def unverifiable_columns(contract: Contract) -> list[str]:
    """Columns whose stored value is parsed from PostgreSQL's text (real, double precision, money):
    their ``col::text`` is not re-rendered from the stored value, so a row's hash cannot be
    recomputed from bronze alone."""
    return [c.name for c in contract.columns if c.type.read is ReadMode.PARSED]


def altered_rows(contract: Contract, dt: DeltaTable, storage: StorageLike,
                 ) -> tuple[list[Mismatch], int, str | None]:
    """(altered rows, rows checked, what could not be checked and why)."""
    skipped = unverifiable_columns(contract)
    if skipped:
        return [], 0, (f"not checked: {', '.join(skipped)} are stored parsed from PostgreSQL's text "
                       f"(real/double precision/money), which bronze does not re-render")
    columns = list(dict.fromkeys([*contract.column_names, "record_hash", *contract.merge_key]))
    found: list[Mismatch] = []
    checked = 0
    unstorable = quarantined_keys(contract, storage)
    for data in frames(scan_columns(dt, columns, f"{STATUS} = '{ACTIVE}'")):
        data = data.cast(pa.schema([pa.field(f.name, pa.string()) if pa.types.is_string_view(f.type) else f
                                    for f in data.schema]))
        if contract.encrypted_columns:
            data = decrypt_table(data, contract, storage)
        recomputed = record_hash(data.combine_chunks().to_batches()[0], contract)
        differ = pc.fill_null(pc.not_equal(recomputed, data.column("record_hash").combine_chunks()), True)
        checked += data.num_rows
        found += [Mismatch(k, ALTERED) for k in key_values(data.filter(differ), contract)]
    kept = [m for m in found if m.key not in unstorable]
    note = None if len(kept) == len(found) else (
        f"{len(found) - len(kept):,} rows not judged: values bronze cannot store (NULL in bronze, the "
        f"source's text in {QUARANTINE_TABLE}) do not re-hash")
    return sorted(kept, key=lambda m: m.key), checked, note


def quarantined_keys(contract: Contract, storage: StorageLike) -> set[Key]:
    """Keys of ``contract``'s records in ``bz_quarantine`` (e.g. values bronze could not store),
    named as a reconciliation names them (a key column's JSON value stands for its text: exact for
    integer and text-like keys)."""
    dt = as_storage(storage).open(QUARANTINE_TABLE)
    if dt is None or not contract.primary_key:
        return set()
    name = contract.name.replace("'", "''")
    records = query_tables({"q": dt}, f"SELECT record FROM q WHERE table_name = '{name}'")["record"]
    single = by_integer_key(contract) or len(contract.primary_key) == 1
    keys: set[Key] = set()
    for text in records.to_pylist():
        try:
            record = json.loads(text) if text else {}
            values = [record.get(k) for k in contract.primary_key]
        except (ValueError, AttributeError):
            continue
        if any(v is None for v in values):
            continue
        if by_integer_key(contract):
            keys.add(values[0])
        else:
            texts = [v if isinstance(v, str) else json.dumps(v) for v in values]
            keys.add(texts[0] if single else json.dumps(texts, ensure_ascii=False))
    return keys
