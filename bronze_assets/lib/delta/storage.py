"""Where bronze lives, as one value: the root of the Delta tables (a local path or an
object-store URI), the delta-rs object-store options (credentials, region) and the settings of
the deployment that writes it (:class:`~bronze_assets.settings.Settings`: staging, retention,
the audit's user …). Built once — by the ``BronzeStorage`` resource at an entry point — and
passed whole; table locations come from :meth:`Storage.uri`, never from paths joined by hand."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from bronze_assets.settings import Settings

# the check of a root before a command's work: the object store's client gives up on an
# unreachable endpoint after 10 retries with backoff, up to 180 s (5 s to connect, each); the
# check connects within 3 s and retries once, so a store that is down is one line in seconds
PROBE_OPTIONS = {"connect_timeout": "3s", "max_retries": "1", "retry_timeout": "5s"}
# object_store's HTTP client settings: delta-rs takes them with or without the store's prefix
# (``AWS_ALLOW_HTTP``, ``timeout``), obstore only bare and apart from the store's configuration
CLIENT_OPTIONS = frozenset({
    "allow_http", "allow_invalid_certificates", "connect_timeout", "default_content_type", "http1_only",
    "http2_keep_alive_interval", "http2_keep_alive_timeout", "http2_keep_alive_while_idle", "http2_only",
    "pool_idle_timeout", "pool_max_idle_per_host", "proxy_url", "proxy_ca_certificate", "proxy_excludes",
    "randomize_addresses", "read_timeout", "timeout", "user_agent"})
# delta-rs' own options (its commit locking, runtime, the limit of its store's concurrent
# requests): nothing a single GET, PUT or LIST of the files beside the tables needs
DELTA_RS_OPTIONS = frozenset({
    "aws_s3_locking_provider", "aws_s3_allow_unsafe_rename", "delta_dynamo_table_name",
    "mount_allow_unsafe_rename", "allow_unsafe_rename", "object_store_concurrency_limit"})
# object_store's retry policy of every request, as delta-rs names it: obstore's ``retry_config``
RETRY_OPTIONS = {"max_retries": ("max_retries",), "retry_timeout": ("retry_timeout",)} | {
    f"{prefix}{name}": ("backoff", name) for name in ("init_backoff", "max_backoff", "base")
    for prefix in ("", "backoff_config.", "backoff.")}
STORE_PREFIXES = ("aws_", "azure_", "google_")
# humantime's spans (delta-rs' durations: ``5s``, ``200ms``, ``1m 30s``) as obstore takes them; a
# value that might be read otherwise (months, ``5 s``, fractions) is left to delta-rs' handler
_UNITS = {"ms": 0.001, "msec": 0.001, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
          "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
          "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800, "weeks": 604800}
_SPAN = r"([0-9]+)(" + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")"
_DURATION = re.compile(rf"{_SPAN}( *{_SPAN})*")


@dataclass(frozen=True)
class Storage:
    """The bronze root, its object-store options and the deployment's settings (the defaults
    unless an entry point read them: :meth:`Settings.from_env`)."""

    root: str
    options: Mapping[str, str] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    # the obstore client of the files beside the tables, made on first use (its connections kept)
    _client: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", self.root.rstrip("/"))

    @property
    def delta_options(self) -> dict[str, str] | None:
        """The options as delta-rs takes them (None when there are none)."""
        return dict(self.options) or None

    def uri(self, table: str) -> str:
        """Location of the Delta table ``table`` (``bz_orders``, ``bz_audit_log`` …)."""
        return f"{self.root}/{table}"

    def open(self, table: str) -> DeltaTable | None:
        """The Delta table ``table``, or None if it does not exist yet."""
        return open_table(self.uri(table), self.delta_options)

    def open_shared(self, table: str) -> DeltaTable | None:
        """``table`` for reading only: within :func:`shared_tables`, the one open of the scope (the
        table as a load's MERGE left it, or as the first reader opened it), else opened. What it
        returns is never brought up to date nor written through."""
        uri = self.uri(table)
        with _SHARED_LOCK:
            if _SHARED is not None and uri in _SHARED:
                return _SHARED[uri]
        dt = self.open(table)
        if dt is not None:
            self.share(table, dt)
        return dt

    def share(self, table: str, dt: DeltaTable) -> None:
        """Within :func:`shared_tables`, ``dt`` is ``table`` for :meth:`open_shared` (the caller
        no longer changes it: e.g. a load's table after its checks); outside, nothing."""
        with _SHARED_LOCK:
            if _SHARED is not None:
                _SHARED[self.uri(table)] = dt

    def check(self) -> None:
        """One request to the root's store (a listing of the root): raises the store's error when
        it refuses or cannot be reached, before any work starts — within seconds
        (:data:`PROBE_OPTIONS`), where the store's client would retry for up to three minutes."""
        if not self.remote:
            return
        from deltalake._internal import DeltaFileSystemHandler

        probe = DeltaFileSystemHandler(table_uri=self.root, options={**PROBE_OPTIONS, **self.options},
                                       known_sizes=None)
        probe.get_file_info_selector("", True, False)

    @property
    def remote(self) -> bool:
        """Whether the root is on an object store (``s3://``, ``abfss://`` …), not a local folder."""
        return "://" in self.root and not self.root.startswith("file://")

    def read_file(self, path: str) -> bytes | None:
        """The file at ``path`` under the root (a small record bronze keeps beside its tables),
        or None if there is none."""
        from obstore.exceptions import NotFoundError

        try:
            if not self.remote:
                with open(self._local(path), "rb") as f:
                    return f.read()
            if (store := self._put_store()) is not None:
                import obstore

                return bytes(obstore.get(store, path).bytes())
            return bytes(self._files().open_input_file(path).read())
        except (FileNotFoundError, NotFoundError):
            return None

    def write_file(self, path: str, data: bytes) -> None:
        """Write (or replace) the file at ``path`` under the root (a local root is created): a
        local file is written beside and renamed into place; on an object store one PUT
        (``obstore``): delta-rs' output stream is a multipart upload, three requests for a file
        of a few hundred bytes."""
        if not self.remote:
            target = self._local(path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            # never listed (see listed); the pid at a fixed width: process 12's 35th write and
            # process 123's 5th would both be #1234
            partial = f"{target}#{os.getpid():010d}{next(_WRITES)}"
            try:
                with open(partial, "wb") as f:
                    f.write(data)
                os.replace(partial, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(partial)
                raise
            return
        if (store := self._put_store()) is not None:
            import obstore

            obstore.put(store, path, data, use_multipart=False)
            return
        stream = self._files().open_output_stream(path, None)
        try:
            stream.write(data)
        finally:
            stream.close()

    def delete_file(self, path: str) -> None:
        """Remove the file at ``path`` under the root (gone already: nothing to do)."""
        from obstore.exceptions import NotFoundError

        with contextlib.suppress(FileNotFoundError, NotFoundError):
            if not self.remote:
                os.remove(self._local(path))
            elif (store := self._put_store()) is not None:
                import obstore

                obstore.delete(store, path)
            else:
                self._files().delete_file(path)

    def delete_files(self, paths: Sequence[str]) -> None:
        """Remove the files at ``paths`` under the root (those gone already: nothing to do). On S3
        one request per thousand files (DeleteObjects, through ``obstore``), else one each."""
        if not paths:
            return
        store = self._put_store() if self.remote and self.root.startswith("s3://") else None
        if store is None:
            for path in paths:
                self.delete_file(path)
            return
        import obstore

        obstore.delete(store, list(paths))

    def list_files(self, folder: str) -> list[str]:
        """The paths (under the root) of the files below ``folder`` (none if it does not exist)."""
        if not self.remote:
            top, base = self._local(folder), self._local("")
            return [os.path.relpath(os.path.join(where, name), base).replace(os.sep, "/")
                    for where, _dirs, names in os.walk(top, followlinks=True)
                    for name in names if listed(name)]
        if (store := self._put_store()) is not None:
            import obstore

            return [meta["path"] for chunk in obstore.list(store, folder) for meta in chunk]
        from pyarrow import fs

        return [i.path for i in self._delta_listing(folder, recursive=True) if i.type == fs.FileType.File]

    def listing(self, folder: str) -> list[tuple[str, int, int]]:
        """(name, size, modified ns) of the files directly in ``folder`` under the root, by name
        (one listing request per thousand files on an object store; empty if there is none)."""
        if not self.remote:
            found = []
            try:
                with os.scandir(self._local(folder)) as entries:
                    for entry in entries:
                        if not (listed(entry.name) and entry.is_file()):
                            continue
                        try:
                            st = entry.stat()
                        except FileNotFoundError:  # removed since the folder was read: as the store
                            continue
                        found.append((entry.name, st.st_size, st.st_mtime_ns))
            except (FileNotFoundError, NotADirectoryError):
                return []
            return sorted(found)
        if (store := self._put_store()) is not None:
            import obstore

            objects = obstore.list_with_delimiter(store, folder)["objects"]
            return sorted((m["path"].rsplit("/", 1)[-1], int(m["size"]), epoch_ns(m["last_modified"]))
                          for m in objects)
        from pyarrow import fs

        return sorted((f.path.rsplit("/", 1)[-1], int(f.size or 0), int(f.mtime_ns or 0))
                      for f in self._delta_listing(folder, recursive=False) if f.type == fs.FileType.File)

    def _local(self, path: str) -> str:
        """The local path of ``path`` under a local root (a ``file://`` root is a URL: decoded,
        as delta-rs decodes it)."""
        root = local_path(self.root)
        return os.path.join(root, path) if path else root

    def _delta_listing(self, folder: str, recursive: bool) -> list[Any]:
        """delta-rs' listing of ``folder`` on an object store whose options ``obstore`` is not
        given (it holds the GIL while its tasks run on delta-rs' runtime: see :meth:`_put_store`)."""
        try:
            return self._files().get_file_info_selector(folder, True, recursive)
        except TableNotFoundError:
            return []

    def _files(self) -> Any:
        """delta-rs' object store at the root (the Delta tables' credentials and options). Its raw
        handler: through pyarrow (``deltalake.fs.DeltaStorageHandler``) a write fails, pyarrow 26
        hands the stream a Buffer it refuses (deltalake 1.6.6)."""
        from deltalake._internal import DeltaFileSystemHandler

        return DeltaFileSystemHandler(table_uri=self.root, options=self.delta_options, known_sizes=None)

    def _put_store(self) -> Any:
        """``obstore``'s store at the root, configured as delta-rs' is (:func:`object_store`;
        None when obstore refuses one of the root's options). The files beside the tables
        go through ``obstore`` rather than delta-rs' handler, which holds the GIL while its
        listing's tasks wait for delta-rs' runtime, whose threads may be waiting for the GIL in a
        write's Python reader: a deadlock (deltalake 1.6.6 ``get_file_info_selector``). Made once
        per value (about 5 ms, and a new client opens new connections)."""
        if "store" not in self._client:
            self._client["store"] = object_store(self.root, self.options)
        return self._client["store"]

    def at(self, root: str) -> Storage:
        """The same options and settings at another root (e.g. an archive next to bronze)."""
        return Storage(root, self.options, self.settings)


def object_store(url: str, options: Mapping[str, str] | None = None) -> Any | None:
    """``obstore``'s store at ``url``, configured as delta-rs configures its own from the store's
    environment variables and ``options`` (delta-rs' names: the HTTP client's settings go to
    obstore's client options, delta-rs' own options are left out); None when obstore refuses an
    option delta-rs takes (e.g. ``AWS_PROFILE``): delta-rs' handler is used then."""
    from obstore.store import from_url

    config: dict[str, str] = {}
    client: dict[str, str] = {}
    retry: dict[str, Any] = {}
    for key, value in (options or {}).items():
        name = key.lower()
        bare = name.split("_", 1)[1] if name.startswith(STORE_PREFIXES) else name
        if name in RETRY_OPTIONS:
            if (taken := _retry_value(RETRY_OPTIONS[name][-1], value)) is None:
                return None
            *within, last = RETRY_OPTIONS[name]
            (retry.setdefault(within[0], {}) if within else retry)[last] = taken
        elif bare in CLIENT_OPTIONS:
            client[bare] = value
        elif name not in DELTA_RS_OPTIONS and not name.startswith("dynamodb_"):
            config[name] = value
    try:
        return from_url(url, config=config or None, client_options=client or None,  # type: ignore[arg-type]
                        retry_config=retry or None)  # type: ignore[arg-type]
    except Exception:  # obstore's refusal of an option (BaseError): delta-rs takes more
        return None
    except BaseException as exc:  # a Rust panic on an option's value (pyo3's PanicException)
        if type(exc).__name__ != "PanicException":
            raise
        return None


def _retry_value(name: str, value: str) -> int | float | timedelta | None:
    """A retry option's value as delta-rs reads it (``max_retries`` a count, ``base`` a number,
    the others humantime durations); None when Python might read it otherwise than delta-rs."""
    if name == "max_retries":
        return int(value) if re.fullmatch(r"[0-9]+", value) else None
    if name == "base":
        return float(value) if re.fullmatch(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?", value) else None
    if not _DURATION.fullmatch(value):
        return None
    return sum((timedelta(seconds=int(n) * _UNITS[u]) for n, u in re.findall(_SPAN, value)), timedelta())


def local_path(location: str) -> str:
    """The local path of a local folder given as a path or a ``file://`` URI (decoded, as delta-rs
    decodes it: ``file:///data/my%20lake`` is ``/data/my lake``)."""
    return unquote(location.removeprefix("file://")) if location.startswith("file://") else location


def listed(name: str) -> bool:
    """Whether a local file is listed as the object store lists it: not an upload in progress
    (``name#<digits>``, object_store's temporary files)."""
    _, mark, suffix = name.partition("#")
    return not (mark and suffix.isdigit())


def epoch_ns(moment: datetime) -> int:
    """``moment`` in nanoseconds since the epoch (exact: no float)."""
    since = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return ((since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds) * 1_000


_WRITES = itertools.count()  # this process's local file writes: the temporary names
_SHARED: dict[str, DeltaTable] | None = None  # by URI, while a shared_tables() scope is open
_SHARED_LOCK = threading.Lock()  # the demo's loads share their tables from two step threads


@contextlib.contextmanager
def shared_tables() -> Iterator[None]:
    """A scope in which the bronze tables are opened once for their readers (:meth:`Storage.open_shared`:
    the reconciliation, the status of the report) and a load's table as its MERGE left it is
    handed over to them: for a caller that knows nothing else writes those tables meanwhile (the
    demo, between its loads and its report). On an object store each open reads the table's log,
    four requests for a young table and a dozen or more past a checkpoint."""
    global _SHARED
    with _SHARED_LOCK:
        outer, _SHARED = _SHARED, ({} if _SHARED is None else _SHARED)
    try:
        yield
    finally:
        with _SHARED_LOCK:
            _SHARED = outer


class OpenedTables:
    """Tables of one storage, each opened at most once per run (the load's staging, its MERGE and
    its checks share one open): on an object store every open reads the log since its checkpoint,
    a refresh lists it once."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._opened: dict[str, DeltaTable | None] = {}

    def open(self, table: str) -> DeltaTable | None:
        if table not in self._opened:
            self._opened[table] = self.storage.open(table)
        return self._opened[table]

    def adopt(self, table: str, dt: DeltaTable) -> None:
        """Take ``dt`` (e.g. the table as the load's MERGE left it) as the run's open of ``table``."""
        self._opened[table] = dt

    def read_only(self, table: str) -> DeltaTable | None:
        """``table`` to read only (e.g. a parent a check reads): the run's open of it if it has
        one, else the storage's shared one (:meth:`Storage.open_shared`), not kept here."""
        if table in self._opened:
            return self._opened[table]
        return self.storage.open_shared(table)

    def refresh(self, table: str) -> DeltaTable | None:
        """``table`` at its latest version: the one opened brought up to date (one listing, plus
        the commits made since), else opened."""
        dt = self._opened.get(table)
        if dt is None:
            self._opened.pop(table, None)
            return self.open(table)
        dt.update_incremental()
        return dt


StorageLike = Storage | str | os.PathLike[str]


def as_storage(value: StorageLike) -> Storage:
    """``value`` as a :class:`Storage`: a root path or URI means that root without options, with
    the default :class:`Settings` (an entry point passes the settings it read in a Storage)."""
    if isinstance(value, Storage):
        return value
    if not value:
        raise TypeError("no bronze root: pass the Storage of the BronzeStorage resource (its root and "
                        "the settings read from the environment)")
    return Storage(os.fspath(value))


def open_table(uri: str, storage_options: Mapping[str, str] | None = None) -> DeltaTable | None:
    """The Delta table at ``uri``, or None if there is none yet."""
    try:
        return DeltaTable(uri, storage_options=dict(storage_options) if storage_options else None)
    except TableNotFoundError:
        return None
