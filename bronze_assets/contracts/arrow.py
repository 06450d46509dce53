"""Arrow types of the contract columns (what extraction yields and bronze stores).

The Delta type of every column comes from the one mapping table
(:data:`bronze_assets.contracts.types.TYPE_MAP`); this module only spells Delta's primitive types
in Arrow, as delta-rs reads and writes them.
"""

from __future__ import annotations

import pyarrow as pa

from bronze_assets.contracts.model import Contract, PgType

DELTA_TO_ARROW: dict[str, pa.DataType] = {
    "short": pa.int16(),
    "integer": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "binary": pa.binary(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "timestamp_ntz": pa.timestamp("us"),  # Delta table feature timestampNtz (reader 3 / writer 7)
}


def arrow_type(type_: PgType) -> pa.DataType:
    """The Arrow type for a contract column type; numerics keep their declared precision."""
    delta = type_.delta_type
    if delta.startswith("decimal("):
        p, s = delta[len("decimal(") : -1].split(",")
        return pa.decimal128(int(p), int(s))
    return DELTA_TO_ARROW[delta]


def source_schema(contract: Contract) -> pa.Schema:
    """Arrow schema of the contract's source columns, in contract order."""
    return pa.schema([pa.field(c.name, arrow_type(c.type)) for c in contract.columns])
