"""Find the partitions of a business-date table whose source rows changed since a watermark."""

from __future__ import annotations

from datetime import date, datetime

from bronze_assets.contracts import Contract, PartitionKind
from bronze_assets.lib.source.ddl import qualified, quote_ident
from bronze_assets.lib.source.extract import SourceReader, _date, _ts
from bronze_assets.settings import SOURCE_SCHEMA


def changed_months_sql(contract: Contract, since: datetime, until: datetime, open_end: datetime) -> str:
    """Months (first day) whose rows have ``since <= updated_at < until``.

    A row lives in the month of its business date, or — when that is NULL or beyond the newest
    partition — in the month of its ``updated_at`` (the same rule extraction uses).
    """
    if contract.partitioning.kind is not PartitionKind.MONTHLY_BUSINESS_DATE:
        raise ValueError(f"{contract.name} is not partitioned by a business date")
    bd = quote_ident(contract.partitioning.business_date_column or "")
    month = (
        f"CASE WHEN {bd} IS NOT NULL AND {bd} < {_date(open_end)} "
        f"THEN date_trunc('month', {bd})::date "
        f"ELSE date_trunc('month', updated_at AT TIME ZONE 'UTC')::date END"
    )
    return (
        f"SELECT DISTINCT {month} AS m FROM {qualified(SOURCE_SCHEMA, contract.name)} "
        f"WHERE updated_at >= {_ts(since)} AND updated_at < {_ts(until)} ORDER BY 1"
    )


def changed_months(
    dsn: str, contract: Contract, since: datetime, open_end: datetime
) -> tuple[list[date], datetime]:
    """Changed months since ``since`` and the new watermark (capped below open transactions)."""
    with SourceReader(dsn, contract) as reader:
        cap = reader.snapshot().watermark_cap()
        months = [row[0] for row in reader.query(changed_months_sql(contract, since, cap, open_end))]
    return months, cap
