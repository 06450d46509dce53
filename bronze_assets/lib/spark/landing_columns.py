"""The Spark types of a landing table's columns and the cast of a text value to them, as the local
engine casts (ARCHITECTURE §2.6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bronze_assets.contracts import Contract
from bronze_assets.contracts.arrow import arrow_type
from bronze_assets.contracts.types import PgType

if TYPE_CHECKING:
    from pyspark.sql import Column



# a Spark type's name (simpleString, or schema_of_variant's) as DuckDB's json_type names what a JSON
# value holds: how the local engine's rule (landing_schema.new_column) reads a column Spark inferred
_JSON_TYPES = {"BIGINT": "BIGINT", "INT": "BIGINT", "SMALLINT": "BIGINT", "TINYINT": "BIGINT",
               "DECIMAL": "DOUBLE", "DOUBLE": "DOUBLE", "FLOAT": "DOUBLE", "STRING": "VARCHAR",
               "BOOLEAN": "BOOLEAN", "OBJECT": "OBJECT", "STRUCT": "OBJECT", "MAP": "OBJECT",
               "ARRAY": "ARRAY", "VOID": "NULL"}


def json_type(spark_type_name: str) -> str:
    """DuckDB's json_type name of a value of the Spark type ``spark_type_name`` (``bigint``,
    ``decimal(10,2)``, ``struct<…>``, ``OBJECT<…>``); VARCHAR for any other."""
    return _JSON_TYPES.get(spark_type_name.split("(")[0].split("<")[0].upper(), "VARCHAR")


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def spark_type(type_: PgType) -> str:
    """The Spark SQL type a column of PostgreSQL type ``type_`` is stored as."""
    from pyspark.sql.pandas.types import from_arrow_type

    return str(from_arrow_type(arrow_type(type_)).simpleString())


def spark_types(contract: Contract) -> dict[str, str]:
    """The Spark SQL type of each contract column (the types the table stores)."""
    return {c.name: spark_type(c.type) for c in contract.columns}


def cast_text(text: Column, spark_type: str) -> Column:
    """``text`` as ``spark_type``, NULL where it does not parse, as the local engine casts: an
    integer takes integer text only; a date or timestamp starts with a digit (Spark would also read
    'yesterday', 'now' or 'epoch')."""
    from pyspark.sql import functions as F

    cast = text.try_cast(spark_type)
    if spark_type in ("tinyint", "smallint", "int", "bigint"):
        return F.when(text.rlike(r"^ *[+-]?[0-9]+ *$"), cast)
    if spark_type in ("date", "timestamp", "timestamp_ntz"):
        return F.when(text.rlike(r"^\s*[+-]?[0-9]"), cast)
    return cast
