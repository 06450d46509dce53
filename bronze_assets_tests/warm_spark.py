"""The Spark job of the Pipes tests, on the JVM of the test worker's ``spark`` session.

Run through Pipes as in production, every Spark job would start a JVM of its own (≈ 30 CPU s on
the 2-core machine, more than the load itself). Here the job's subprocess attaches to the worker's
JVM (conftest's ``spark`` fixture) through its py4j gateway, in a Spark session of its own (its
SQL settings and temporary views apart), and then runs the job's ``main`` unchanged: the same
process, arguments, environment, Pipes protocol and exit. Starting the job's own JVM is what it
skips; ``spark_session`` builds the worker's JVM the same way.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import dagster as dg

from bronze_assets.defs.pipes import BronzePipes

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ENV_GATEWAY = "BRONZE_TEST_SPARK_GATEWAY"  # "<port>:<secret>" of the worker's py4j gateway
_served: dict[str, str] = {}


def serve(spark: SparkSession) -> None:
    """Offer the JVM of ``spark`` (this worker's session) to the Spark jobs the tests start."""
    gateway = spark.sparkContext._gateway
    assert gateway is not None
    params = gateway.gateway_parameters
    _served[ENV_GATEWAY] = f"{params.port}:{params.auth_token}"


def gateway_env() -> dict[str, str]:
    """What a job's environment needs to attach: empty before :func:`serve` (it then starts its own)."""
    return dict(_served)


def attach() -> SparkSession | None:
    """In a job's process: make a new session on the served JVM the active one (``spark_session``
    returns it), if this process was given one."""
    served = os.environ.get(ENV_GATEWAY)
    if not served:
        return None
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    from bronze_assets.settings import Settings

    port, secret = served.split(":", 1)
    os.environ["PYSPARK_GATEWAY_PORT"], os.environ["PYSPARK_GATEWAY_SECRET"] = port, secret
    os.environ["PYSPARK_PYTHON"] = Settings.from_env().spark_python  # this job's Python workers
    gateway = launch_gateway()  # connects to the running gateway (PYSPARK_GATEWAY_PORT)
    jvm: Any = gateway.jvm
    jsc = jvm.JavaSparkContext(jvm.org.apache.spark.SparkContext.getOrCreate())
    context = SparkContext(gateway=gateway, jsc=jsc, conf=SparkConf(_jconf=jsc.sc().conf()))
    return SparkSession(context, jsparkSession=jvm.SparkSession.getDefaultSession().get().newSession())


class WarmSparkPipes(BronzePipes):
    """The ``pipes`` resource of the tests: the ``spark`` engine's job attaches to the worker's JVM."""

    def subprocess_client(self) -> dg.PipesSubprocessClient:
        return dg.PipesSubprocessClient(env=gateway_env())

    def spark_job_command(self) -> list[str]:
        return [sys.executable, "-m", __name__]


def main() -> int:
    from bronze_assets.spark_job import main as job

    attach()
    return job()


if __name__ == "__main__":
    sys.exit(main())
