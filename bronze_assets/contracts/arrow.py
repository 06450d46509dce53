"""Arrow types of the contract columns (what extraction yields and bronze stores)."""

from __future__ import annotations

import pyarrow as pa

from bronze_assets.contracts.model import Contract, PgType

_SIMPLE: dict[PgType, pa.DataType] = {
    PgType.INTEGER: pa.int32(),
    PgType.BIGINT: pa.int64(),
    PgType.TEXT: pa.string(),
    PgType.DATE: pa.date32(),
    PgType.TIMESTAMPTZ: pa.timestamp("us", tz="UTC"),
}


def arrow_type(type_: PgType) -> pa.DataType:
    """The Arrow type for a contract column type; numerics keep their declared precision."""
    if type_.is_numeric:
        return pa.decimal128(*type_.precision_scale)
    return _SIMPLE[type_]


def source_schema(contract: Contract) -> pa.Schema:
    """Arrow schema of the contract's source columns, in contract order."""
    return pa.schema([pa.field(c.name, arrow_type(c.type)) for c in contract.columns])
