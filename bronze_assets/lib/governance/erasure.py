"""GDPR erasure of one data subject: shred its key, mark its rows FORGOTTEN, audit it.

1. The subject's data key is destroyed in ``bz_pii_keys`` (tombstone kept, key-store files
   vacuumed): its ciphertext in the current and every retained older version of the bronze
   table becomes unreadable at once, and later loads encrypt it to NULL.
2. ``record_status = 'FORGOTTEN'`` and the PII columns are set to NULL in the current version
   (and the PII columns in every version of ``bz_<name>_history``); the MERGE never updates a
   FORGOTTEN row, so later loads never bring the data back.
3. One ``ERASURE`` row goes to ``bz_audit_log``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from deltalake import CommitProperties

from bronze_assets.contracts import Contract, get_contract
from bronze_assets.lib.delta.control import OPERATION_KEY, audited
from bronze_assets.lib.delta.storage import StorageLike, as_storage
from bronze_assets.lib.enrich.metadata import FORGOTTEN
from bronze_assets.lib.governance.keystore import KeyStore
from bronze_assets.lib.governance.reader import open_bronze

ERASURE = "ERASURE"


@dataclass
class ErasureResult:
    table: str
    subject_id: str
    rows_forgotten: int
    keys_shredded: int
    key_files_vacuumed: int
    version: int


def _literal(value: int | str) -> str:
    return str(int(value)) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"


def forget_subject(
    contract: Contract | str,
    subject_id: int | str,
    storage: StorageLike,
    job_id: str | None = None,
) -> ErasureResult:
    """Erase data subject ``subject_id`` of ``contract`` (e.g. ``("customers", 42)``)."""
    contract = get_contract(contract) if isinstance(contract, str) else contract
    if contract.data_subject is None:
        raise ValueError(
            f"{contract.bronze_table} has no data subject: erasure is defined for tables whose contract "
            f"sets data_subject (e.g. customers)"
        )
    storage = as_storage(storage)
    dt = open_bronze(contract, storage)
    # no refusal on a table with deletion vectors (the Spark engine's): an erasure cannot wait for
    # a purge, and delta-rs' UPDATE applies the vectors of the file it rewrites (its remove carries
    # the vector; verified on delta-rs 1.6.6), at the cost of one copied file
    with audited(storage, contract.bronze_table, ERASURE, job_id) as entry:
        shred = KeyStore(storage).forget(contract.name, [str(subject_id)])
        subject_type = contract.column(contract.data_subject).type.value
        value = _literal(int(subject_id) if subject_type in ("integer", "bigint") else str(subject_id))
        updates = {c: "NULL" for c in contract.pii_columns}
        updates |= {
            "record_status": f"'{FORGOTTEN}'",
            "update_timestamp": f"CAST('{datetime.now(UTC).isoformat()}' AS TIMESTAMP)",
            "batch_id": f"'{uuid.uuid4()}'",
        }
        metrics = dt.update(updates=updates, predicate=f"{contract.data_subject} = {value}",
                            commit_properties=CommitProperties(custom_metadata={OPERATION_KEY: "ERASURE"}))
        history = storage.open(contract.history_table)
        if history is not None:  # every version: its personal columns were shredded with the key
            history.update(updates={c: "NULL" for c in contract.pii_columns},
                           predicate=f"{contract.data_subject} = {value}",
                           commit_properties=CommitProperties(custom_metadata={OPERATION_KEY: "ERASURE"}))
        result = ErasureResult(
            contract.bronze_table, str(subject_id), int(metrics.get("num_updated_rows", 0)),
            shred.keys_shredded, shred.files_vacuumed, dt.version(),
        )
        entry.records_affected = result.rows_forgotten
        entry.details = json.dumps({"subject_column": contract.data_subject} | asdict(result))
    return result
