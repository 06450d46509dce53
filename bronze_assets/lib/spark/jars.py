"""The JVM jars the Spark engine needs, pinned in one place and fetched with ``mvn``.

Spark's own Ivy resolution (``spark.jars.packages``) may not reach Maven Central from every
machine; ``mvn`` does. :func:`fetch` copies exactly these artifacts (no transitive ones: Spark
provides the rest) into a cache folder, and :func:`jar_paths` hands them to ``spark.jars``.

* Delta Lake 4.0.1 for Scala 2.13 = the line of pyspark 4.0.x (``delta-spark`` on PyPI is the
  same version: its Python API and these jars must match);
* the PostgreSQL JDBC driver;
* junixsocket, so JDBC reaches a server that listens on a Unix socket only (the embedded
  ``pgserver`` default, and local servers without TCP);
* hadoop-aws (S3A: ``s3://`` and ``s3a://`` roots, see :mod:`bronze_assets.lib.spark.session`) of
  the Hadoop that pyspark 4.0.1 ships (``hadoop-client-api-3.4.1``), and the AWS SDK v2 bundle that
  Hadoop 3.4.1 is built against (one shaded jar, about 560 MB: fetched once into the cache).

Run ``python -m bronze_assets.lib.spark.jars`` (``make test`` and ``make demo`` do) to fetch them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bronze_assets.settings import Settings

DELTA_VERSION = "4.0.1"  # = delta-spark on PyPI (pyproject's spark extra)
HADOOP_VERSION = "3.4.1"  # = pyspark 4.0.1's pyspark/jars/hadoop-client-*-3.4.1.jar
AWS_SDK_VERSION = "2.24.6"  # hadoop-project 3.4.1's aws-java-sdk-v2.version
ARTIFACTS: tuple[str, ...] = (
    f"io.delta:delta-spark_2.13:{DELTA_VERSION}",
    f"io.delta:delta-storage:{DELTA_VERSION}",
    "org.postgresql:postgresql:42.7.14",
    "com.kohlschutter.junixsocket:junixsocket-common:2.10.1",
    "com.kohlschutter.junixsocket:junixsocket-native-common:2.10.1",
    f"org.apache.hadoop:hadoop-aws:{HADOOP_VERSION}",
    f"software.amazon.awssdk:bundle:{AWS_SDK_VERSION}",
)
# Hadoop file systems: on the driver's class path, not in spark.jars (Hadoop finds a file system
# through the JVM's class loader, and spark.jars would copy the bundle into every session's folder)
FILE_SYSTEMS = frozenset(ARTIFACTS[-2:])
ENV_JARS_DIR = "BRONZE_SPARK_JARS_DIR"  # Settings.spark_jars_dir


class SparkJarsMissingError(RuntimeError):
    """The pinned jars are not in the jars folder."""


def jar_name(coordinate: str) -> str:
    _, artifact, version = coordinate.split(":")
    return f"{artifact}-{version}.jar"


def missing(folder: Path) -> list[str]:
    return [c for c in ARTIFACTS if not (folder / jar_name(c)).is_file()]


def fetch(folder: Path, quiet: bool = True) -> Path:
    """Copy every pinned jar that is not there yet into ``folder`` (``Settings.spark_jars_dir``:
    ``$BRONZE_SPARK_JARS_DIR``, else the user's cache folder, kept between runs and clones) with
    ``mvn dependency:copy``."""
    todo = missing(folder)
    if not todo:
        return folder
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SparkJarsMissingError(
            f"Maven (mvn) is needed to fetch the Spark engine's jars into {folder}: install it "
            f"(Debian: apt-get install maven) or copy {', '.join(jar_name(c) for c in todo)} there.")
    folder.mkdir(parents=True, exist_ok=True)
    for coordinate in todo:
        cmd = [mvn, "-B", *(["-q"] if quiet else []), "dependency:copy", f"-Dartifact={coordinate}",
               f"-DoutputDirectory={folder}", "-Dmdep.overWriteReleases=false"]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
        if done.returncode != 0:
            raise SparkJarsMissingError(f"mvn could not fetch {coordinate}:\n{done.stdout[-2000:]}"
                                        f"{done.stderr[-2000:]}")
    return folder


def jar_paths(folder: Path, *, file_systems: bool = False) -> list[str]:
    """The pinned jars in ``folder`` for ``spark.jars`` (``file_systems``: the Hadoop file systems,
    for the driver's class path); a clear error when they have not been fetched."""
    absent = missing(folder)
    if absent:
        raise SparkJarsMissingError(
            f"the Spark engine's jars are missing from {folder}: {', '.join(jar_name(c) for c in absent)}. "
            f"Fetch them with `python -m bronze_assets.lib.spark.jars` (needs mvn), or point "
            f"{ENV_JARS_DIR} at a folder that holds them.")
    return [str(folder / jar_name(c)) for c in ARTIFACTS if (c in FILE_SYSTEMS) == file_systems]


if __name__ == "__main__":  # an entry point (make test, make demo): it reads the settings
    where = fetch(Settings.from_env().spark_jars_dir, quiet="-v" not in sys.argv)
    print(f"Spark jars ready in {where}")
