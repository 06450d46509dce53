"""What the Spark job and the orchestrator say to each other over Dagster Pipes, besides the
standard materialization and check reports."""

FAILURE = "bronze_failure"  # custom Pipes message: {"message", "retry", "metadata"}
DESCRIPTIONS = "bronze_check_descriptions"  # custom Pipes message: check name -> description
LOCAL_IO, VOLUMES_IO = "local", "volumes"  # how Pipes reaches the job: local files or a UC volume
