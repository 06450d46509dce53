"""A delta-spark write committed as a bronze load commit: its ``bronze.*`` metadata (delta-spark's
``userMetadata``) and the Delta app transaction of the table it writes (``txnAppId`` /
``txnVersion``), set on the session for the one write and unset after it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.load_commit import app_id, next_txn_version

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"


def commit_with(spark: SparkSession, contract: Contract, target: Any, meta: dict[str, str],
                write: Callable[[], None], table: str | None = None) -> None:
    """Run ``write`` with the commit's metadata and app transaction set on the session; ``target``:
    the table before the write (delta-rs, None when it does not exist), ``table``: another table
    of the contract than ``bz_<name>`` (its history)."""
    app = app_id(contract, table)
    conf = spark.conf
    conf.set(USER_METADATA_CONF, json.dumps(meta))
    conf.set(TXN_APP_ID_CONF, app)
    conf.set(TXN_VERSION_CONF, str(next_txn_version(target, app)))
    try:
        write()
    finally:
        for key in (USER_METADATA_CONF, TXN_APP_ID_CONF, TXN_VERSION_CONF):
            conf.unset(key)
