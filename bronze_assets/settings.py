"""Environment settings: every variable bronze_assets reads is registered in :data:`VARIABLES`
and read through :func:`env`, lazily (never at import time) so tests can change them freely.
``bronze --help`` and the README list the same variables (a test keeps them in step).

An entry point (a Dagster resource's set-up, the ``bronze`` CLI, the Spark job, the demo, a
benchmark) reads them once into one frozen :class:`Settings` value (:meth:`Settings.from_env`)
and passes it down: nothing under ``bronze_assets.lib`` reads the environment."""

from __future__ import annotations

import getpass
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, its default (as a user reads it) and what it sets."""

    name: str
    default: str
    meaning: str


VARIABLES: tuple[Variable, ...] = (
    Variable("BRONZE_SOURCE_DSN", "embedded server", "libpq URI of the source PostgreSQL"),
    Variable("BRONZE_ROOT", "$BRONZE_DATA_DIR/bronze", "root of the bz_* Delta tables (path or URI)"),
    Variable("BRONZE_LANDING_ROOT", "$BRONZE_DATA_DIR/landing",
             "landing-zone files, one folder per landing table (path or URI)"),
    Variable("BRONZE_DATA_DIR", "./data", "embedded server, default bronze root, Dagster home, reports"),
    Variable("BRONZE_START_DATE", "first day of this UTC month", "go-live day of the daily tables"),
    Variable("BRONZE_PARTITIONS_START", "2020-01-01", "first month of the monthly tables"),
    Variable("BRONZE_COMMIT_CHUNK_ROWS", "500000", "rows per commit of a large load (checkpoints)"),
    Variable("BRONZE_TARGET_FILE_MB", "32", "target size of a bronze data file"),
    Variable("BRONZE_CDC_TARGET_FILE_MB", "4", "target size of a data file of a CDC table"),
    Variable("BRONZE_PARQUET_COMPRESSION", "uncompressed",
             "codec of the local engine's Parquet files: uncompressed, snappy, lz4, zstd or zstd:<level>"),
    Variable("BRONZE_EXTRACT_PARALLELISM", "CPU count, at most 4", "source connections per extraction"),
    Variable("BRONZE_ENGINE", "local", "load engine of every table: local, spark or databricks"),
    Variable("BRONZE_ENGINE_TABLES", "unset", "per-table engine, e.g. bz_order_details=spark"),
    Variable("BRONZE_CDC", "on", "off: the watermark pattern for every table, no log-based CDC"),
    Variable("BRONZE_DEPLOYMENT_ID", "a hash of the bronze root", "id in this deployment's CDC slot names"),
    Variable("BRONZE_SPARK_MASTER", "local[N], N = CPU count", "Spark master of the spark engine"),
    Variable("BRONZE_SPARK_JARS_DIR", "~/.cache/bronze_assets/spark-jars", "jars of the Spark engine"),
    Variable("BRONZE_STAGE_DIR", "system temp dir", "where extracted batches are staged"),
    Variable("BRONZE_GX_SERVICE_DIR", "<system temp dir>/bronze-gx-<uid>",
             "private folder (0700) of the GX validation service's socket"),
    Variable("BRONZE_GX_SERVICE_IDLE_SECONDS", "4500",
             "the GX validation service ends after this many seconds unused"),
    Variable("BRONZE_SCHEDULES_RUNNING", "unset (stopped)", "1 ships the schedules running"),
    Variable("BRONZE_SENSORS_RUNNING", "unset (stopped)",
             "1 ships the KPI alert and landing-file sensors running"),
    Variable("BRONZE_RETENTION_YEARS", "7", "retention period of business-dated rows"),
    Variable("BRONZE_ARCHIVE_ROOT", "$BRONZE_ROOT/_archive", "where retention moves old rows"),
    Variable("BRONZE_COMPUTE_COST_PER_HOUR", "0.55", "rate for bz_cost_tracking"),
    Variable("BRONZE_USER", "the OS user", "user recorded in bz_audit_log"),
    Variable("BRONZE_SMTP_HOST", "unset (no email)", "SMTP server for alert email"),
    Variable("BRONZE_SMTP_PORT", "25 (465 with SSL)", "SMTP port"),
    Variable("BRONZE_SMTP_USER", "unset", "SMTP login"),
    Variable("BRONZE_SMTP_PASSWORD", "unset", "SMTP password (a secret: redacted in logs)"),
    Variable("BRONZE_SMTP_STARTTLS", "auto (when the server offers it)", "STARTTLS for SMTP"),
    Variable("BRONZE_SMTP_SSL", "off", "SMTP over TLS"),
    Variable("BRONZE_SMTP_TIMEOUT", "10", "SMTP timeout, seconds"),
    Variable("BRONZE_ALERT_EMAIL_FROM", "bronze-alerts@company.com", "sender of alert email"),
    Variable("BRONZE_ALERT_EMAIL_TO", "data-engineering@company.com, data-ops@company.com",
             "recipients of alert email"),
    Variable("BRONZE_ALERT_WEBHOOK_URL", "unset", "Slack-compatible webhook for alerts"),
    Variable("BRONZE_ALERT_WEBHOOK_TIMEOUT", "10", "webhook timeout, seconds"),
    Variable("BRONZE_SECRET_SCOPE", "bronze", "Databricks secret scope (on a Databricks runtime)"),
    Variable("BRONZE_KEY_VAULT_URL", "unset", "Azure Key Vault for secrets (extra azure)"),
    Variable("KConnectionString", "unset", "secret: source connection string (URI, JDBC or ADO.NET)"),
    Variable("KUser", "unset", "secret: source user"),
    Variable("KPassword", "unset", "secret: source password"),
    Variable("KPiiMasterKey", "generated into $BRONZE_DATA_DIR/secrets", "secret: PII master key"),
    Variable("BRONZE_DATABRICKS_VOLUME", "unset", "UC volume for Pipes messages (databricks engine)"),
    Variable("BRONZE_DATABRICKS_WHEEL", "unset", "bronze_assets wheel path the Databricks task installs"),
    Variable("BRONZE_DATABRICKS_COMPUTE", "serverless", "databricks compute: serverless or job-cluster"),
    Variable("DATABRICKS_HOST", "unset", "Databricks workspace URL (with DATABRICKS_TOKEN; SDK auth)"),
    Variable("DATABRICKS_RUNTIME_VERSION", "set by Databricks", "enables the Databricks secret scope"),
    Variable("DAGSTER_HOME", "$BRONZE_DATA_DIR/dagster_home (make demo/ui)", "Dagster instance"),
    Variable("AWS_ENDPOINT_URL", "unset (AWS)", "S3-compatible endpoint of an s3:// root (read by delta-rs)"),
    Variable("AWS_ENDPOINT", "unset", "older spelling of AWS_ENDPOINT_URL"),
)
SECRET_PREFIX = "BRONZE_SECRET_"  # BRONZE_SECRET_<name> is another spelling of secret <name>
SECRET_NAMES = frozenset(v.name for v in VARIABLES if v.meaning.startswith("secret:"))
_KNOWN = {v.name for v in VARIABLES}


def env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of environment variable ``name`` (stripped; None when unset or empty).

    Only registered variables can be read, so none goes undocumented.
    """
    if name not in _KNOWN and not name.startswith(SECRET_PREFIX):
        raise KeyError(f"{name} is not registered in bronze_assets.settings.VARIABLES")
    value = (os.environ if environ is None else environ).get(name, "").strip()
    return value or None


def source_dsn_from(variable: str) -> str | None:
    """The libpq URI in ``$<variable>``: a tables file names the variable its source's DSN is in
    (default ``BRONZE_SOURCE_DSN``); the name is the user's, so it is not registered."""
    if variable == ENV_SOURCE_DSN:
        return env(variable)
    value = os.environ.get(variable, "").strip()
    return value or None


_ON = {"1", "true", "yes", "on"}


def env_flag(name: str) -> bool:
    """A switch variable: 1/true/yes/on."""
    return (env(name) or "").lower() in _ON


ENV_SOURCE_DSN = "BRONZE_SOURCE_DSN"
ENV_BRONZE_ROOT = "BRONZE_ROOT"
ENV_DATA_DIR = "BRONZE_DATA_DIR"

SOURCE_DATABASE = "DE"
SOURCE_SCHEMA = "tests"
SOURCE_SYSTEM = "PostgreSQL_DE"


def data_dir() -> Path:
    """Project data folder (embedded PostgreSQL, default bronze root): ``$BRONZE_DATA_DIR`` or ./data."""
    return Path(env(ENV_DATA_DIR) or "data").expanduser().absolute()


def user_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The user's cache folder (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    return Path((os.environ if environ is None else environ).get("XDG_CACHE_HOME") or Path.home() / ".cache")


def bronze_root() -> str:
    """Root of the bronze Delta tables: ``$BRONZE_ROOT`` (path or object-store URI) or ./data/bronze."""
    value = env(ENV_BRONZE_ROOT)
    return _root(value) if value else str(data_dir() / "bronze")


def _root(value: str) -> str:
    return value if "://" in value else str(Path(value).expanduser().absolute())


ENV_START_DATE = "BRONZE_START_DATE"
ENV_PARTITIONS_START = "BRONZE_PARTITIONS_START"
DEFAULT_PARTITIONS_START = "2020-01-01"


def _parse_date(name: str, value: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a date; write it as YYYY-MM-DD (UTC)") from None




# --------------------------------------------------------------------------------- Settings
# the writer's memory grows with a commit: 1 M rows peaked 0.9 GB, 500 k 0.67 GB
DEFAULT_COMMIT_CHUNK_ROWS = 500_000
# Few large files, but not one per table: delta-rs MERGE is copy-on-write (no deletion vectors),
# so a change rewrites every file it touches; 32 MiB keeps a snapshot at scale 10 to a handful of
# files per table while a change clustered on recent keys rewrites one or two of them.
DEFAULT_TARGET_FILE_MB = 32
# A CDC table takes a small MERGE every tick, so its files are smaller: the tick rewrites the files
# holding its changed keys. bench_cdc (600 changed keys a table, median of 3 ticks): scale 10 / 1
# = 1.43x with 32 MiB files, 1.40x with 8 MiB, 1.01x with 4 MiB.
DEFAULT_CDC_TARGET_FILE_MB = 4
# The local engine's Parquet codec: none by default (copy-on-write MERGEs rewrite every file they
# touch; measured in README "Performance"); a deployment that pays for storage or transfer picks one.
PARQUET_CODECS = ("uncompressed", "snappy", "lz4", "zstd")
DEFAULT_PARQUET_COMPRESSION = "uncompressed"
DEFAULT_RETENTION_YEARS = 7
DEFAULT_COST_PER_HOUR = 0.55  # USD per compute hour (a small Databricks job cluster, DBU + VM)
DEFAULT_SECRET_SCOPE = "bronze"
DEFAULT_GX_SERVICE_IDLE_SECONDS = 4500  # outlives an hourly schedule's gap: each tick finds it warm
ALERT_VARIABLES = tuple(v.name for v in VARIABLES if v.name.startswith(("BRONZE_SMTP_", "BRONZE_ALERT_")))
JARS_SUBDIR = Path("bronze_assets", "spark-jars")
_OFF = {"0", "off", "false", "no"}


def set_allocator_defaults(defaults: Mapping[str, tuple[str, str]]) -> None:
    """Set each variable of ``defaults`` (name: (the module that reads it on import, value); e.g.
    ``lib.allocators.DEFAULTS``) that the user did not set, while that module is not imported."""
    for name, (module, value) in defaults.items():
        if module not in sys.modules and name not in os.environ:
            os.environ[name] = value


# glibc's own settings of the malloc parameters ``lib.allocators`` sets with ``mallopt``
GLIBC_MALLOC_VARIABLES = {"arena_max": "MALLOC_ARENA_MAX", "mmap_threshold": "MALLOC_MMAP_THRESHOLD_"}


def glibc_malloc_set_by_user() -> frozenset[str]:
    """The glibc malloc parameters (``arena_max``, ``mmap_threshold``) the user set for this
    process: by their ``MALLOC_`` variable or a ``glibc.malloc.<parameter>`` tunable."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return frozenset(p for p, name in GLIBC_MALLOC_VARIABLES.items()
                     if os.environ.get(name, "").strip() or f"glibc.malloc.{p}=" in tunables)


def default_parallelism() -> int:
    """Source connections per extraction when unset: the CPU count, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def os_user() -> str:
    """The OS user (``unknown`` in containers without a passwd entry)."""
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


class _Reader:
    """Reads registered variables from one mapping and parses them, naming the variable and the fix."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str) -> str | None:
        return env(name, self.environ)

    def number(self, name: str, default: float, kind: type[int] | type[float] = int, minimum: float = 1
               ) -> int | float:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or number < minimum:
            what = "a whole number" if kind is int else "a number"
            raise ValueError(f"{name}={value!r} is not {what} of at least {minimum:g}; set it like "
                             f"{name}={default:g} or unset it (README, 'Configuration')") from None
        return number

    def codec(self, name: str, default: str) -> str:
        """A Parquet codec, ``zstd`` optionally with its level (``zstd:3``, 1–22), in lower case."""
        value = (self.text(name) or default).strip().lower()
        codec, _, level = value.partition(":")
        if codec not in PARQUET_CODECS or (level and (codec != "zstd" or not level.isdigit()
                                                      or not 1 <= int(level) <= 22)):
            raise ValueError(f"{name}={value!r} is not a Parquet codec: set one of "
                             f"{', '.join(PARQUET_CODECS)} (zstd with an optional level, e.g. "
                             f"{name}=zstd:3) or unset it (README, 'Configuration')")
        return value

    def path(self, name: str) -> Path | None:
        value = self.text(name)
        return Path(value).expanduser().absolute() if value else None


@dataclass(frozen=True)
class Settings:
    """Every setting the library takes, parsed and validated: built once by an entry point
    (:meth:`from_env`) and passed down as a value. ``Settings()`` is the defaults, as documented
    in :data:`VARIABLES` (no environment read)."""

    data_dir: Path = field(default_factory=lambda: Path("data").absolute())
    source_dsn: str | None = None  # None: the KConnectionString secret, else the embedded server
    bronze_root: str = field(default_factory=lambda: str(Path("data", "bronze").absolute()))
    landing_root: str = field(default_factory=lambda: str(Path("data", "landing").absolute()))
    extract_parallelism: int = field(default_factory=default_parallelism)
    stage_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    gx_service_dir: Path = field(
        default_factory=lambda: Path(tempfile.gettempdir()) / f"bronze-gx-{os.getuid()}")
    gx_service_idle_seconds: int = DEFAULT_GX_SERVICE_IDLE_SECONDS
    commit_chunk_rows: int = DEFAULT_COMMIT_CHUNK_ROWS
    target_file_bytes: int = DEFAULT_TARGET_FILE_MB * 1024 * 1024
    cdc_target_file_bytes: int = DEFAULT_CDC_TARGET_FILE_MB * 1024 * 1024
    parquet_compression: str = DEFAULT_PARQUET_COMPRESSION  # a codec of PARQUET_CODECS, zstd:<level>
    start_date: date | None = None  # None: the first day of the current UTC month (go_live)
    partitions_start: date = date(2020, 1, 1)  # = DEFAULT_PARTITIONS_START
    retention_years: int = DEFAULT_RETENTION_YEARS
    archive_root: str | None = None  # None: <bronze root>/_archive
    user: str = field(default_factory=os_user)
    cost_per_hour: float = DEFAULT_COST_PER_HOUR
    cdc: bool = True
    deployment_id: str | None = None  # None: a hash of the bronze root
    secret_scope: str = DEFAULT_SECRET_SCOPE
    secret_scope_set: bool = False  # $BRONZE_SECRET_SCOPE given (sent to a remote Spark job)
    key_vault_url: str | None = None
    databricks_runtime: bool = False
    spark_master: str = field(default_factory=lambda: f"local[{os.cpu_count() or 2}]")
    spark_jars_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / JARS_SUBDIR)
    spark_python: str = sys.executable  # Spark's Python workers ($PYSPARK_PYTHON, else this one)
    object_store_endpoint: str | None = None
    # where loads run (parsed by defs.engines, which knows the engines) and the Databricks engine's job
    engine: str | None = None  # $BRONZE_ENGINE
    engine_tables: str | None = None  # $BRONZE_ENGINE_TABLES: bz_<name>=<engine>, ...
    databricks_volume: str | None = None
    databricks_wheel: str | None = None
    databricks_compute: str | None = None
    schedules_running: bool = False  # the schedules ship running
    sensors_running: bool = False  # the sensors ship running
    # secrets set in the environment ($<key> or $BRONZE_SECRET_<key>), for the first secret provider
    env_secrets: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)
    # the BRONZE_SMTP_* / BRONZE_ALERT_* values (lib.alerts builds the channels); a password: no repr
    alerts: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)

    @property
    def pgdata(self) -> Path:
        """The embedded PostgreSQL's data folder."""
        return self.data_dir / "pgdata"

    def go_live(self, today: date | None = None) -> date:
        """Go-live day of the daily tables: ``start_date``, else the first day of ``today``'s
        month (default: today, UTC). Its partition is the initial snapshot (ARCHITECTURE §2.4)."""
        return self.start_date or (today or datetime.now(UTC).date()).replace(day=1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every registered variable of ``environ`` (default: this process's environment), read
        once; a malformed value raises ValueError naming the variable and the fix."""
        environ = os.environ if environ is None else environ
        read = _Reader(environ)
        defaults = cls()
        start = read.text(ENV_START_DATE)
        parallelism = read.number("BRONZE_EXTRACT_PARALLELISM", defaults.extract_parallelism)
        scope = read.text("BRONZE_SECRET_SCOPE")
        data = read.path(ENV_DATA_DIR) or defaults.data_dir
        root = read.text(ENV_BRONZE_ROOT)
        return cls(
            data_dir=data,
            source_dsn=read.text(ENV_SOURCE_DSN),
            env_secrets={k: v.strip() for k, v in environ.items()
                         if (k in SECRET_NAMES or (k.startswith(SECRET_PREFIX) and k not in _KNOWN))
                         and v.strip()},
            bronze_root=_root(root) if root else str(data / "bronze"),
            landing_root=_root(landing) if (landing := read.text("BRONZE_LANDING_ROOT"))
            else str(data / "landing"),
            extract_parallelism=int(parallelism),
            stage_dir=read.path("BRONZE_STAGE_DIR") or defaults.stage_dir,
            gx_service_dir=read.path("BRONZE_GX_SERVICE_DIR") or defaults.gx_service_dir,
            gx_service_idle_seconds=int(read.number("BRONZE_GX_SERVICE_IDLE_SECONDS",
                                                    DEFAULT_GX_SERVICE_IDLE_SECONDS)),
            commit_chunk_rows=int(read.number("BRONZE_COMMIT_CHUNK_ROWS", DEFAULT_COMMIT_CHUNK_ROWS)),
            target_file_bytes=int(read.number("BRONZE_TARGET_FILE_MB", DEFAULT_TARGET_FILE_MB)) * 1024 * 1024,
            cdc_target_file_bytes=int(read.number("BRONZE_CDC_TARGET_FILE_MB", DEFAULT_CDC_TARGET_FILE_MB))
            * 1024 * 1024,
            parquet_compression=read.codec("BRONZE_PARQUET_COMPRESSION", DEFAULT_PARQUET_COMPRESSION),
            start_date=_parse_date(ENV_START_DATE, start) if start else None,
            partitions_start=_parse_date(ENV_PARTITIONS_START, read.text(ENV_PARTITIONS_START)
                                         or DEFAULT_PARTITIONS_START).replace(day=1),
            retention_years=int(read.number("BRONZE_RETENTION_YEARS", DEFAULT_RETENTION_YEARS, minimum=0)),
            archive_root=read.text("BRONZE_ARCHIVE_ROOT"),
            user=read.text("BRONZE_USER") or defaults.user,
            cost_per_hour=float(read.number("BRONZE_COMPUTE_COST_PER_HOUR", DEFAULT_COST_PER_HOUR, float, 0)),
            cdc=(read.text("BRONZE_CDC") or "on").lower() not in _OFF,
            deployment_id=read.text("BRONZE_DEPLOYMENT_ID"),
            secret_scope=scope or DEFAULT_SECRET_SCOPE,
            secret_scope_set=scope is not None,
            key_vault_url=read.text("BRONZE_KEY_VAULT_URL"),
            databricks_runtime=read.text("DATABRICKS_RUNTIME_VERSION") is not None,
            spark_master=read.text("BRONZE_SPARK_MASTER") or defaults.spark_master,
            spark_jars_dir=read.path("BRONZE_SPARK_JARS_DIR") or user_cache_dir(environ) / JARS_SUBDIR,
            spark_python=environ.get("PYSPARK_PYTHON") or sys.executable,
            object_store_endpoint=read.text("AWS_ENDPOINT_URL") or read.text("AWS_ENDPOINT"),
            engine=read.text("BRONZE_ENGINE"),
            engine_tables=read.text("BRONZE_ENGINE_TABLES"),
            databricks_volume=read.text("BRONZE_DATABRICKS_VOLUME"),
            databricks_wheel=read.text("BRONZE_DATABRICKS_WHEEL"),
            databricks_compute=read.text("BRONZE_DATABRICKS_COMPUTE"),
            schedules_running=(read.text("BRONZE_SCHEDULES_RUNNING") or "").lower() in _ON,
            sensors_running=(read.text("BRONZE_SENSORS_RUNNING") or "").lower() in _ON,
            alerts={n: v for n in ALERT_VARIABLES if (v := read.text(n)) is not None},
        )
