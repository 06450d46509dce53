"""One failure policy for every engine and entry point: what a retry can fix, and what it cannot.

:func:`classify` turns an exception raised by a load (PostgreSQL through ADBC, psycopg2 or
Spark's JDBC; delta-rs and its object store; bronze's own errors) into a :class:`Cause`, which
says whether a retry can succeed, and a one-line message that names the table and the fix (the
source's password never appears: driver text is redacted). The local engine, the IO manager,
the Spark/Databricks job (its ``retry`` flag over Pipes) and ``bronze demo`` all use it, so a
wrong password fails at once everywhere and a dropped connection is retried everywhere.

Not retried (they fail at once, in one line):

* authentication: SQLSTATE 28000/28P01, "password authentication failed", "no pg_hba.conf
  entry"; object-store credentials refused or missing
* permission: SQLSTATE 42501, "permission denied", "must be owner of"
* missing object: SQLSTATE 3D000/3F000/42P01, '… "x" does not exist', a missing source table or
  bucket
* schema mismatch: the schema gate (the batch is quarantined), SQLSTATE 42703/42804
* duplicate key: a staged batch repeating a key, SQLSTATE 23505
* configuration: a lost CDC slot, CDC the source cannot serve, a load the Spark engine cannot
  do, an unknown host name
* bug: SQLSTATE classes 42 and 22, TypeError, ValueError … (a retry runs the same code on the
  same data)
* interrupted: Ctrl-C or run termination (also a source statement cancelled by it: ADBC cancels
  its query on SIGINT, SQLSTATE 57014 "due to user request"); the run stops

Retried (the asset's ``RetryPolicy``):

* connection: SQLSTATE class 08, 57P01-03, 53300; refused, reset, closed, timed out
* conflict: SQLSTATE 40001/40P01/55P03; a concurrent Delta commit
* storage: an object store's 5xx, 429, SlowDown, timeout
* unknown: anything else (as before this policy)
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import dagster as dg

from bronze_assets.lib.source.dsn import redact
from bronze_assets.lib.store_errors import exception_chain as _chain
from bronze_assets.settings import SOURCE_SCHEMA


class Cause(StrEnum):
    AUTHENTICATION = "authentication"
    PERMISSION = "permission"
    MISSING_OBJECT = "missing object"
    SCHEMA_MISMATCH = "schema mismatch"
    DUPLICATE_KEY = "duplicate key"
    CONFIGURATION = "configuration"
    BUG = "bug"
    INTERRUPTED = "interrupted"
    CONNECTION = "connection"
    CONFLICT = "conflict"
    STORAGE = "storage"
    UNKNOWN = "unknown"

    @property
    def retry(self) -> bool:
        """Whether a later attempt can succeed."""
        return self in _RETRYABLE


INTERRUPTS: tuple[type[BaseException], ...] = (KeyboardInterrupt, dg.DagsterExecutionInterruptedError)
"""What stops a load from outside (Ctrl-C, SIGINT forwarded by Pipes, a run's termination): not
``Exception``s, so code that audits every failure catches them as well."""


_RETRYABLE = frozenset({Cause.CONNECTION, Cause.CONFLICT, Cause.STORAGE, Cause.UNKNOWN})

# bronze's own errors whose message already names the table and the fix (matched by qualified
# class name so this module imports none of them: some live behind optional extras)
_OWN: Mapping[str, Cause] = {
    "bronze_assets.lib.load.errors.SchemaMismatchError": Cause.SCHEMA_MISMATCH,
    "bronze_assets.lib.load.errors.SourceTableMissingError": Cause.MISSING_OBJECT,
    "bronze_assets.lib.delta.merge_result.DuplicateKeyError": Cause.DUPLICATE_KEY,
    "bronze_assets.lib.cdc.CdcSlotLostError": Cause.CONFIGURATION,
    "bronze_assets.lib.spark.load.SparkEngineError": Cause.CONFIGURATION,
    "bronze_assets.lib.delta.writers.MixedEnginesError": Cause.CONFIGURATION,
    "bronze_assets.lib.delta.writers.DeletionVectorsError": Cause.CONFIGURATION,
}
# wrappers around a driver's error: the driver's text decides; these are the defaults
_WRAPPERS: Mapping[str, Cause] = {
    "bronze_assets.lib.source.postgres.SourceConnectionError": Cause.CONNECTION,
    "bronze_assets.lib.source.replication.ReplicationError": Cause.CONFIGURATION,
    "deltalake.exceptions.CommitFailedError": Cause.CONFLICT,
}
BUG_EXCEPTION_TYPES: tuple[type[BaseException], ...] = (
    TypeError, AttributeError, NameError, AssertionError, NotImplementedError, ImportError, ValueError,
    KeyError, IndexError, ZeroDivisionError, RecursionError)
"""Python exception types that mean a bug in the code that raised them (or data it does not
handle): classified :attr:`Cause.BUG`, never retried, since a retry runs the same code on the same
data. ``NotImplementedError`` is one: a code path a load reached that was never written. Matched
last, after bronze's own errors, SQLSTATEs and driver texts (which name a more precise cause)."""

_SQLSTATES: Mapping[str, Cause] = {
    "28000": Cause.AUTHENTICATION, "28P01": Cause.AUTHENTICATION,
    "42501": Cause.PERMISSION,
    "3D000": Cause.MISSING_OBJECT, "3F000": Cause.MISSING_OBJECT, "42P01": Cause.MISSING_OBJECT,
    "42703": Cause.SCHEMA_MISMATCH, "42804": Cause.SCHEMA_MISMATCH,
    "23505": Cause.DUPLICATE_KEY,
    "40001": Cause.CONFLICT, "40P01": Cause.CONFLICT, "55P03": Cause.CONFLICT,
    "57P01": Cause.CONNECTION, "57P02": Cause.CONNECTION, "57P03": Cause.CONNECTION,
    "53300": Cause.CONNECTION,
}
# the rest of a class: syntax/access rule violations and data exceptions are the same on a
# retry; connection exceptions pass; a feature the server lacks is its configuration
_SQLSTATE_CLASSES: Mapping[str, Cause] = {"08": Cause.CONNECTION, "42": Cause.BUG, "22": Cause.BUG,
                                          "0A": Cause.CONFIGURATION}


@dataclass(frozen=True)
class _Rule:
    cause: Cause
    pattern: re.Pattern[str]
    fix: str


def _rule(cause: Cause, fix: str, *markers: str) -> _Rule:
    return _Rule(cause, re.compile("|".join(markers), re.IGNORECASE), fix)


_SOURCE_AUTH_FIX = ("check the user and password of $BRONZE_SOURCE_DSN (or the KUser/KPassword secrets) "
                    "and the server's pg_hba.conf")
_GRANT_FIX = (f"grant the loader role read access: GRANT USAGE ON SCHEMA {SOURCE_SCHEMA} and GRANT SELECT ON "
              f"ALL TABLES IN SCHEMA {SOURCE_SCHEMA} (README, 'Using a real PostgreSQL', lists every grant)")
_MISSING_FIX = ("create it (`bronze ddl` prints the source tables) or point $BRONZE_SOURCE_DSN at the "
                "database that holds it")
_STORAGE_AUTH_FIX = ("give the object store's credentials (README, 'Deploying', 'Bronze on S3': AWS_* or "
                     "AZURE_* variables, an instance profile, or BronzeStorage.storage_options)")
_BUCKET_FIX = "create the bucket (or container) of $BRONZE_ROOT, or fix $BRONZE_ROOT"

# first match wins: permanent causes before transient ones, since libpq's text for a refused
# password also says "connection to server … failed"
_RULES: tuple[_Rule, ...] = (
    _rule(Cause.AUTHENTICATION, _SOURCE_AUTH_FIX, r"password authentication failed",
          r"authentication failed for user", r"no pg_hba\.conf entry", r"no password supplied",
          r"pg_hba\.conf rejects", r"role \"[^\"]*\" does not exist", r"SCRAM authentication",
          r"The server requested \S+ authentication"),
    _rule(Cause.AUTHENTICATION, _STORAGE_AUTH_FIX, r"InvalidAccessKeyId", r"SignatureDoesNotMatch",
          r"ExpiredToken", r"AccessDenied", r"AuthorizationFailure", r"AuthenticationFailed",
          r"while loading credentials", r"IMDS session token", r"\b403 Forbidden", r"status 403"),
    _rule(Cause.PERMISSION, _GRANT_FIX, r"permission denied", r"must be owner of",
          r"must be superuser", r"insufficient privilege"),
    _rule(Cause.SCHEMA_MISMATCH, "the source no longer matches the contract; fix the source or the contract",
          r"column \"[^\"]*\" (of relation \"[^\"]*\" )?does not exist"),
    _rule(Cause.MISSING_OBJECT, _BUCKET_FIX, r"NoSuchBucket", r"ContainerNotFound", r"bucket does not exist"),
    _rule(Cause.MISSING_OBJECT, _MISSING_FIX, r"(database|relation|schema|table) \"[^\"]*\" does not exist"),
    _rule(Cause.DUPLICATE_KEY, "the source repeats a primary key; fix the source",
          r"duplicate key value violates unique constraint"),
    _rule(Cause.BUG, "a bug: the traceback is in the run's log", r"syntax error at or near"),
    _rule(Cause.INTERRUPTED, "re-run to continue; what was committed stays",
          r"canceling statement due to user request"),
    _rule(Cause.CONNECTION, "retried: connection problems pass; if it persists, check that the server "
          "is up and reachable", r"temporary failure in name resolution"),
    _rule(Cause.CONFIGURATION, "check the host name of $BRONZE_SOURCE_DSN",
          r"could not translate host name", r"Name or service not known", r"UnknownHostException"),
    _rule(Cause.CONFLICT, "retried: a concurrent transaction or commit got in the way",
          r"could not serialize access", r"deadlock detected", r"could not obtain lock",
          r"canceling statement due to lock timeout",
          r"concurrent (transaction|append|delete|update)", r"commit failed.*conflict"),
    _rule(Cause.CONNECTION, "retried: connection problems pass; if it persists, check that the server "
          "is up and reachable",
          r"connection refused", r"connection to \S+ refused", r"connection reset",
          r"server closed the connection",
          r"terminating connection", r"no connection to the server", r"could not receive data",
          r"could not send data", r"connection timed out", r"timeout expired", r"broken pipe",
          r"the database system is (starting up|shutting down|in recovery mode)",
          r"too many (clients|connections)", r"remaining connection slots",
          r"the connection attempt failed", r"this connection has been closed",
          r"an I/O error occurred while sending", r"network is unreachable", r"no route to host",
          r"SSL SYSCALL error", r"could not connect to server"),
    _rule(Cause.STORAGE, "retried: the object store answered with a transient error",
          # an HTTP status, not any number (Spark's texts carry task and stage numbers)
          r"\b(500|502|503|504) (Internal Server Error|Bad Gateway|Service Unavailable|Gateway Timeout)",
          r"status( code)?:? (429|500|502|503|504)\b", r"SlowDown", r"Too Many Requests",
          r"error sending request", r"operation timed out", r"request timed out",
          r"connection closed before message completed", r"dispatch failure", r"ServiceUnavailable",
          r"InternalError"),
)
_FIXES: Mapping[Cause, str] = {
    Cause.AUTHENTICATION: _SOURCE_AUTH_FIX,
    Cause.PERMISSION: _GRANT_FIX,
    Cause.MISSING_OBJECT: _MISSING_FIX,
    Cause.SCHEMA_MISMATCH: "the source no longer matches the contract; fix the source or the contract",
    Cause.DUPLICATE_KEY: "the source repeats a primary key; fix the source",
    Cause.CONFIGURATION: "see the message",
    Cause.BUG: "a bug or data bronze does not handle: the traceback is in the run's log",
    Cause.INTERRUPTED: "re-run to continue; what was committed stays",
    Cause.CONNECTION: "retried: connection problems pass; if it persists, check that the server is up "
                      "and reachable",
    Cause.CONFLICT: "retried: a concurrent transaction or commit got in the way",
    Cause.STORAGE: "retried: the object store answered with a transient error",
    Cause.UNKNOWN: "retried by the asset's retry policy; the traceback is in the run's log",
}


@dataclass(frozen=True)
class Classified:
    """What failed, whether a retry can fix it, and one line saying so (table and fix named)."""

    cause: Cause
    message: str
    sqlstate: str | None = None  # the server's code, when the error carries one (any driver)
    error_type: str = ""  # the exception's qualified type: engine-specific (ADBC's, py4j's …)

    @property
    def retry(self) -> bool:
        return self.cause.retry

    def audit_details(self, engine: str) -> dict[str, Any]:
        """What a FAILED audit row records besides the message: the class and retry decision and
        SQLSTATE (the same on every engine), and the ``engine`` and exception type (its own)."""
        return {"failure_class": self.cause.value, "retry": self.retry, "sqlstate": self.sqlstate,
                "engine": engine, "error_type": self.error_type}


def one_line(text: str) -> str:
    """``text`` on one line (libpq and JDBC messages span several)."""
    return " ".join(text.split())


def _qualified_names(exc: BaseException) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__]


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE an error carries: ADBC's ``sqlstate``, psycopg2's ``pgcode``, a Java
    ``SQLException``'s (Spark's JDBC read, through py4j), or in its text."""
    for link in _chain(exc):
        for attr in ("sqlstate", "pgcode"):
            value = getattr(link, attr, None)
            if isinstance(value, str) and len(value) == 5:
                return value.upper()
        # py4j's Py4JJavaError, and PySpark's converted errors, keep the Java exception
        java = _java_sqlstate(getattr(link, "java_exception", None) or getattr(link, "_origin", None))
        if java is not None:
            return java
        found = re.search(r"SQLSTATE[:\s]+([0-9A-Z]{5})\b", str(link), re.IGNORECASE)
        if found:
            return found.group(1).upper()
    return None


def _java_sqlstate(throwable: Any) -> str | None:
    """The SQLSTATE of the first ``java.sql.SQLException`` among a Java exception and its causes
    (pgjdbc keeps the server's there; its text does not say it)."""
    for _ in range(10):
        if throwable is None:
            return None
        try:
            value = throwable.getSQLState()  # py4j raises unless the object has the method
            if isinstance(value, str) and len(value) == 5:
                return value.upper()
        except Exception:  # not an SQLException, or the JVM is gone
            pass
        try:
            throwable = throwable.getCause()
        except Exception:
            return None
    return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # delta-rs colours its error chains
_ELAPSED = re.compile(r" in \d+(\.\d+)?(ns|µs|us|ms|s)\b")
_RETRY_CONFIG = re.compile(r",? max_retries\W+\d+, retry_timeout\W+\d+\w*( -)?")
_XML_DECLARATION = re.compile(r"<\?xml[^>]*\?>\s*")
_S3_ERROR = re.compile(r"<Error>\s*<Code>([^<]*)</Code>\s*<Message>([^<]*)</Message>.*?</Error>")  # S3's body


def _detail(text: str, limit: int = 300) -> str:
    """The part of a driver's message that says what happened (libpq: after FATAL:/ERROR:)."""
    text = one_line(_ANSI.sub("", text))
    text = _ELAPSED.sub("", text)  # object_store's "GET … in 2.4s, after 10 retries": per attempt
    text = _RETRY_CONFIG.sub(" ↳", text)
    text = _S3_ERROR.sub(lambda m: f"{m[1]}: {m[2]}", _XML_DECLARATION.sub("", text))
    found = list(re.finditer(r"\b(FATAL|ERROR):\s+", text))
    if found:
        text = text[found[-1].end():]
    text = re.sub(r"\s*(LINE \d+:|Query was:|DETAIL:|HINT:|CONTEXT:|Where:|\bat org\.|\bat java\.).*$",
                  "", text)
    text = re.sub(r"[\s.]*SQLSTATE:?\s*[0-9A-Z]{5}\b.*$", "", text)
    text = text.strip().rstrip(".")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def cause_of(exc: BaseException) -> tuple[Cause, str | None]:
    """The cause of ``exc`` and, when a text rule decided it, that rule's fix."""
    cause, fix, _ = _diagnose(exc)
    return cause, fix


_DIAGNOSIS = "_bronze_diagnosis"


def _diagnose(exc: BaseException) -> tuple[Cause, str | None, str | None]:
    """The cause of ``exc``, the fix of the text rule that decided it, and its SQLSTATE: worked out
    once per exception and kept on it, since the lifecycle's audit, the Spark job and the failure
    policy each classify the same exception (on Spark every walk of its chain asks the JVM)."""
    known = getattr(exc, _DIAGNOSIS, None)
    if known is None:
        known = _diagnosis(exc)
        with suppress(AttributeError):  # an exception type that takes no attributes: worked out again
            setattr(exc, _DIAGNOSIS, known)
    return known


def _diagnosis(exc: BaseException) -> tuple[Cause, str | None, str | None]:
    if isinstance(exc, INTERRUPTS):
        return Cause.INTERRUPTED, None, None
    state = _sqlstate(exc)
    for link in _chain(exc):
        for name in _qualified_names(link):
            if name in _OWN:
                return _OWN[name], None, state
    if state is not None:
        cause = _SQLSTATES.get(state) or _SQLSTATE_CLASSES.get(state[:2])
        if cause is not None:
            return cause, None, state
    text = " ".join(str(link) for link in _chain(exc))
    for rule in _RULES:
        # an error with a SQLSTATE is the database's: the object store's rules do not read it
        # (Spark's text of it carries a JVM stack trace)
        if rule.pattern.search(text) and not (state is not None and rule.cause is Cause.STORAGE):
            return rule.cause, rule.fix, state
    for link in _chain(exc):
        for name in _qualified_names(link):
            if name in _WRAPPERS:
                return _WRAPPERS[name], None, state
    if isinstance(exc, BUG_EXCEPTION_TYPES):
        return Cause.BUG, None, state
    return Cause.UNKNOWN, None, state


def classify(exc: BaseException, table: str, dsn: str | None = None) -> Classified:
    """The cause of ``exc`` (raised while loading ``table``) and a one-line message naming the
    table and the fix; ``dsn``'s password (and any other) is redacted from driver text.

    The message is the same whichever engine met the error: it says the server's words and
    SQLSTATE, not the type of the driver's exception that carried them (ADBC's on the local
    engine, py4j's ``Py4JJavaError`` on Spark), which :attr:`Classified.error_type` keeps. A
    Python bug type (:data:`BUG_EXCEPTION_TYPES`) is named: there the type is the cause."""
    cause, fix, state = _diagnose(exc)
    if cause is Cause.INTERRUPTED:  # the user: the code of the statement it cancelled (57014) is not kept
        state = None
    text = redact(str(exc), dsn)
    if cause is Cause.INTERRUPTED:
        message = f"interrupted — {_FIXES[cause]}"
    elif type(exc).__module__.startswith("bronze_assets."):
        message = one_line(text)  # bronze's own errors name what to do already
    else:
        detail = _detail(text) or type(exc).__name__
        if cause in (Cause.BUG, Cause.UNKNOWN):
            if state is not None:
                detail = f"{detail} (SQLSTATE {state})"
            elif isinstance(exc, BUG_EXCEPTION_TYPES):
                detail = f"{type(exc).__name__}: {detail}"
        message = f"{cause.value}: {detail} — {fix or _FIXES[cause]}"
    if not message.startswith(f"{table}:"):
        message = f"{table}: {message}"
    error_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return Classified(cause, one_line(message), state, error_type)


def explain(exc: BaseException) -> tuple[Cause, str, str]:
    """A driver's error ``exc`` as bronze's wrappers of it tell it: its cause, what happened
    (one line, unredacted: redact it with the DSN) and what to do."""
    cause, fix = cause_of(exc)
    return cause, _detail(str(exc)), fix or _FIXES[cause]


def dagster_failure(classified: Classified, exc: BaseException,
                    metadata: Mapping[str, Any] | None = None) -> dg.Failure:
    """``exc``, classified, as the ``dg.Failure`` every entry point raises: the one-line message,
    and retries allowed only when a retry can succeed (the asset's ``RetryPolicy`` then applies)."""
    if metadata is None:  # e.g. the quarantined batch of a schema mismatch
        metadata = getattr(exc, "failure_metadata", None)
    return dg.Failure(classified.message, allow_retries=classified.retry, metadata=metadata)


class LoadInterrupted(dg.DagsterExecutionInterruptedError, dg.DagsterError):
    """A load the user interrupted (Ctrl-C, run termination): the run stops, never retried.

    Dagster's step boundary turns an interrupt raised in user code into a retry when the asset
    has a ``RetryPolicy``, and passes any ``DagsterError`` through unchanged; this is both, so the
    step fails as interrupted and the run stops, as it does for an interrupt between steps.
    """


@contextmanager
def failure_policy(table: str, dsn: str | None = None) -> Iterator[None]:
    """Wrap one entry point's work on ``table``: an error leaves as :func:`dagster_failure` (one
    line, retried only when a retry can fix it), an interrupt as :class:`LoadInterrupted`.

    A ``dg.Failure`` already raised, and Dagster's own errors, pass unchanged. The traceback is
    kept only when it helps (a bug, an unknown error)."""
    interrupted = f"{table}: interrupted — {_FIXES[Cause.INTERRUPTED]}"
    try:
        yield
    except (dg.Failure, dg.DagsterError, dg.RetryRequested):
        raise
    except INTERRUPTS:
        raise LoadInterrupted(interrupted) from None
    except Exception as exc:
        classified = classify(exc, table, dsn)
        if classified.cause is Cause.INTERRUPTED:  # e.g. the source statement Ctrl-C cancelled
            raise LoadInterrupted(interrupted) from None
        failure = dagster_failure(classified, exc)
        if classified.cause in (Cause.BUG, Cause.UNKNOWN):
            raise failure from exc
        raise failure from None
