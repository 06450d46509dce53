"""``--deep``: recompute each ACTIVE bronze row's §2.2 hash from its own columns (PII decrypted)
and report the rows whose stored ``record_hash`` no longer matches them: rows altered in bronze
after they were written. FORGOTTEN rows are skipped (their personal data is gone by design), and
so are DELETED ones (a soft delete keeps the row's last content; a repair does not rewrite it)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from bronze_assets.contracts import Contract, ReadMode
from bronze_assets.lib.delta.query import scan_columns
from bronze_assets.lib.delta.storage import StorageLike
from bronze_assets.lib.enrich.metadata import ACTIVE
from bronze_assets.lib.enrich.pgtext import record_hash
from bronze_assets.lib.governance.pii import decrypt_table
from bronze_assets.lib.reconcile.bronze_side import frames
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
    key = contract.merge_key[0]
    columns = list(dict.fromkeys([*contract.column_names, "record_hash", key]))
    found: list[Mismatch] = []
    checked = 0
    for data in frames(scan_columns(dt, columns, f"{STATUS} = '{ACTIVE}'")):
        data = data.cast(pa.schema([pa.field(f.name, pa.string()) if pa.types.is_string_view(f.type) else f
                                    for f in data.schema]))
        if contract.encrypted_columns:
            data = decrypt_table(data, contract, storage)
        recomputed = record_hash(data.combine_chunks().to_batches()[0], contract)
        differ = pc.fill_null(pc.not_equal(recomputed, data.column("record_hash").combine_chunks()), True)
        checked += data.num_rows
        found += [Mismatch(k, ALTERED) for k in data.column(key).filter(differ).to_pylist()]
    return sorted(found, key=lambda m: m.key), checked, None
