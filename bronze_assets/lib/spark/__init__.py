"""The Spark engine: the same contracts on Spark + delta-spark (local or Databricks)."""
