"""The source of a landing table (ARCHITECTURE §2.6): the files below
``$BRONZE_LANDING_ROOT/<name>/`` that its ledger (:mod:`bronze_assets.lib.delta.landing_ledger`)
does not hold yet.

Files are listed and read through delta-rs' own object store (``deltalake.fs.DeltaStorageHandler``
as a ``pyarrow.fs`` file system): the client that already reads and writes the Delta tables, so a
local path, ``s3://``, ``gs://`` and ``abfss://`` (Azurite included) work with the credentials,
endpoint and options the bronze root is configured with (``Storage.options`` and the stores'
standard variables), with streaming reads and the listing's size and modification time — no
second object-store client (fsspec, obstore, pyarrow's own S3/Azure file systems, which read
credentials their own way) to configure and keep in step.

The read's :attr:`~LandingRead.selection` is a :class:`FileSelection`; :meth:`LandingRead.acknowledge`
copies the batch's ledger rows (already committed with the data) into ``bz_landing_files``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from deltalake.fs import DeltaStorageHandler
from pyarrow import fs

from bronze_assets.contracts import Contract
from bronze_assets.lib.delta.landing_ledger import LedgerRow, ingested, materialise
from bronze_assets.lib.delta.storage import Storage, listed

if TYPE_CHECKING:
    from bronze_assets.lib.load.lifecycle import LoadRequest

SETTLE = timedelta(seconds=5)  # a file modified more recently may still be being written: next run


@dataclass(frozen=True)
class LandingFile:
    """One file to land: its URI (what the ledger and ``_source_file`` record), its path in
    :attr:`FileSelection.filesystem`, size and modification time."""

    uri: str
    path: str
    size: int
    modification_time: datetime


@dataclass
class FileSelection:
    """What a landing read tells the engine to stage: the new files of the table, oldest first
    (by modification time, then URI: the order in which a later record of a key wins)."""

    contract: Contract
    filesystem: fs.FileSystem
    files: list[LandingFile]
    skipped_recent: list[str] = field(default_factory=list)  # still being written
    changed: list[str] = field(default_factory=list)  # ingested, since changed (allow_overwrites off)
    ledger: list[LedgerRow] = field(default_factory=list)  # filled by the engine as it stages
    table_version: int | None = None  # the data table's version the listing read the ledger at
    ingested: int = 0  # files the ledger holds

    def open(self, file: LandingFile) -> BinaryIO | fs.NativeFile:
        """A stream of ``file``'s bytes (the caller closes it): a local file read straight from the
        operating system (no copy through the object store's Python handler), any other through
        :attr:`filesystem`."""
        if file.uri.startswith("file://"):
            return open(file.uri.removeprefix("file://"), "rb")
        return self.filesystem.open_input_stream(file.path, compression=None)


def landing_folder(root: str, contract: Contract) -> str:
    """The URI of ``contract``'s landing folder under ``root`` (``$BRONZE_LANDING_ROOT``)."""
    return f"{root.rstrip('/')}/{contract.name}"


def landing_files(folder: str, options: dict[str, str] | None) -> tuple[fs.FileSystem, list[fs.FileInfo]]:
    """The file system at ``folder`` (a path or URI; delta-rs' object store) and every entry below
    it (none when it does not exist). A local folder is listed by Arrow's own file system, as
    the object store lists it (uploads in progress left out): delta-rs' handler holds the GIL
    while its listing waits for delta-rs' runtime (see :meth:`Storage._put_store`)."""
    local = "://" not in folder or folder.startswith("file://")
    if local:
        path = Path(folder.removeprefix("file://"))
        if not path.is_dir():
            return fs.LocalFileSystem(), []
        filesystem = fs.SubTreeFileSystem(str(path.absolute()), fs.LocalFileSystem())
        infos = filesystem.get_file_info(fs.FileSelector("", recursive=True, allow_not_found=True))
        return filesystem, [i for i in infos if listed(posixpath.basename(i.path))]
    filesystem = fs.PyFileSystem(DeltaStorageHandler(folder, options))
    return filesystem, filesystem.get_file_info(fs.FileSelector("", recursive=True, allow_not_found=True))


def file_uri(folder: str, path: str) -> str:
    """The URI of the file at ``path`` below ``folder`` (what the ledger and ``_source_file``
    record): ``file://`` and the absolute path for a local file."""
    if "://" not in folder:
        return "file://" + str(Path(folder, path).absolute())
    return f"{folder.rstrip('/')}/{path}"


def list_new_files(contract: Contract, storage: Storage, now: datetime | None = None, repair: bool = True
                   ) -> FileSelection:
    """The files below the table's landing folder (any depth; names starting with ``.`` or ``_``
    are temporary or markers and left out) that the ledger does not hold, except those modified
    within :data:`SETTLE` of ``now``. A file in the ledger whose size or modification time
    changed is listed in ``changed`` (and landed again only with ``allow_overwrites``).
    ``repair``: copy ledger rows a killed run left in its commit only (see :func:`ingested`)."""
    now = now or datetime.now(UTC)
    folder = landing_folder(storage.settings.landing_root, contract)
    filesystem, infos = landing_files(folder, storage.delta_options)
    known = ingested(storage, contract.bronze_table, repair)
    done = known.files
    files: list[LandingFile] = []
    recent: list[str] = []
    changed: list[str] = []
    overwrites = contract.landing is not None and contract.landing.allow_overwrites
    for info in infos:
        if info.type != fs.FileType.File or posixpath.basename(info.path)[:1] in (".", "_"):
            continue
        mtime = info.mtime if info.mtime.tzinfo else info.mtime.replace(tzinfo=UTC)
        file = LandingFile(file_uri(folder, info.path), info.path, int(info.size or 0), mtime)
        seen = done.get(file.uri)
        if seen is not None:
            if seen.size == file.size and seen.modification_time == mtime:
                continue
            changed.append(file.uri)
            if not overwrites:
                continue
        if now - mtime < SETTLE:
            recent.append(file.uri)
            continue
        files.append(file)
    files.sort(key=lambda f: (f.modification_time, f.uri))
    return FileSelection(contract, filesystem, files, sorted(recent), sorted(changed),
                         table_version=known.table_version, ingested=len(done))


@dataclass
class LandingRead:
    """One listing of the new files; acknowledged by copying its ledger rows into
    ``bz_landing_files`` once the data commit (which carries them) is done."""

    selection: FileSelection
    storage: Storage

    def metadata(self) -> dict[str, Any]:
        s = self.selection
        return {"load_pattern": "landing files", "landing_files": len(s.files),
                "landing_bytes": sum(f.size for f in s.files),
                "landing_files_waiting": len(s.skipped_recent), "landing_files_changed": len(s.changed)}

    def acknowledge(self) -> None:
        if self.selection.ledger:
            materialise(self.storage, self.selection.contract.bronze_table, self.selection.ledger)


@dataclass(frozen=True)
class LandingSource:
    """The new files of a landing table."""

    request: LoadRequest
    storage: Storage

    @contextmanager
    def open(self) -> Iterator[LandingRead]:
        yield LandingRead(list_new_files(self.request.contract, self.storage), self.storage)
