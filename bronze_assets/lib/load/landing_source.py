"""The source of a landing table (ARCHITECTURE §2.6): the files below
``$BRONZE_LANDING_ROOT/<name>/`` that its ledger (:mod:`bronze_assets.lib.delta.landing_ledger`)
does not hold yet.

Files are listed and read through the Rust object store delta-rs uses, as a ``pyarrow.fs`` file
system, so ``s3://``, ``gs://`` and ``abfss://`` (Azurite included) work with the credentials,
endpoint and options the bronze root is configured with, with streaming reads and the listing's
size and modification time: through ``obstore`` (configured from the stores' standard variables,
its own runtime, the GIL released) unless obstore refuses one of the root's options, then through
delta-rs' handler (``deltalake.fs.DeltaStorageHandler``, which holds the GIL while it waits for
delta-rs' runtime: see :meth:`Storage._put_store`). A local folder is listed by Arrow's local file system.

The read's :attr:`~LandingRead.selection` is a :class:`FileSelection`; :meth:`LandingRead.acknowledge`
copies the batch's ledger rows (already committed with the data) into ``bz_landing_files``.
"""

from __future__ import annotations

import errno
import io
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
from bronze_assets.lib.delta.storage import Storage, epoch_ns, listed, local_path, object_store

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
        path = Path(local_path(folder))
        if not path.is_dir():
            return fs.LocalFileSystem(), []
        filesystem = fs.SubTreeFileSystem(str(path.absolute()), fs.LocalFileSystem())
        infos = filesystem.get_file_info(fs.FileSelector("", recursive=True, allow_not_found=True))
        return filesystem, [i for i in infos if listed(posixpath.basename(i.path))]
    # on an object store obstore (its own runtime, the GIL released), as Storage's files:
    # delta-rs' handler holds the GIL in block_on while its requests need delta-rs' runtime,
    # whose threads may wait for the GIL in a write's Python reader (a hang); delta-rs' handler
    # only for an option obstore refuses
    store = object_store(folder, options)
    handler = DeltaStorageHandler(folder, options) if store is None else ObjectStoreFiles(folder, store)
    filesystem = fs.PyFileSystem(handler)
    return filesystem, filesystem.get_file_info(fs.FileSelector("", recursive=True, allow_not_found=True))


class ObjectStoreFiles(fs.FileSystemHandler):
    """The files below an object-store ``folder``, listed and read through ``obstore`` (the same
    Rust object store as delta-rs, configured from the store's environment variables), as a
    read-only ``pyarrow.fs`` handler: the paths, sizes and modification times delta-rs' handler
    gives (paths relative to ``folder``)."""

    def __init__(self, folder: str, store: Any):
        self.folder = folder
        self.store = store

    def get_type_name(self) -> str:
        return "bronze-obstore"

    def normalize_path(self, path: str) -> str:
        return path

    def equals(self, other: Any) -> bool:
        return isinstance(other, ObjectStoreFiles) and other.folder == self.folder

    def get_file_info(self, paths: list[str]) -> list[fs.FileInfo]:
        import obstore
        from obstore.exceptions import NotFoundError

        infos = []
        for path in paths:
            try:
                meta = obstore.head(self.store, path)
                infos.append(_file_info(meta))
            except (FileNotFoundError, NotFoundError):
                below = obstore.list_with_delimiter(self.store, path)
                kind = fs.FileType.Directory if below["objects"] or below["common_prefixes"] \
                    else fs.FileType.NotFound
                infos.append(fs.FileInfo(path, kind))
        return infos

    def get_file_info_selector(self, selector: fs.FileSelector) -> list[fs.FileInfo]:
        import obstore

        base = selector.base_dir.strip("/")
        if not selector.recursive:
            listed = obstore.list_with_delimiter(self.store, base or None)
            return [fs.FileInfo(p.rstrip("/"), fs.FileType.Directory) for p in listed["common_prefixes"]] + \
                [_file_info(m) for m in listed["objects"]]
        files = [_file_info(m) for chunk in obstore.list(self.store, base or None) for m in chunk]
        folders = {posixpath.dirname(f.path) for f in files}
        for name in list(folders):
            while (name := posixpath.dirname(name)) and name not in folders:
                folders.add(name)
        return [fs.FileInfo(name, fs.FileType.Directory) for name in sorted(folders)
                if name and name != base] + files

    def open_input_stream(self, path: str) -> fs.NativeFile:
        import obstore
        import pyarrow as pa

        return pa.PythonFile(_Reader(obstore.open_reader(self.store, path)), mode="r")

    def open_input_file(self, path: str) -> fs.NativeFile:
        return self.open_input_stream(path)

    def _read_only(self, *_: Any, **__: Any) -> Any:
        raise OSError(errno.EROFS, f"{self.folder}: a landing folder is only listed and read here")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _read_only
    move = copy_file = open_output_stream = open_append_stream = _read_only


def _file_info(meta: Any) -> fs.FileInfo:
    return fs.FileInfo(meta["path"], fs.FileType.File, size=int(meta["size"]),
                       mtime_ns=epoch_ns(meta["last_modified"]))


class _Reader(io.RawIOBase):
    """An ``obstore`` readable file as a Python raw stream (what ``pyarrow.PythonFile`` reads)."""

    def __init__(self, reader: Any):
        super().__init__()
        self.reader = reader

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return bytes(self.reader.read(size) if size is not None and size >= 0 else self.reader.read())

    def readinto(self, buffer: Any) -> int:
        data = memoryview(self.reader.read(len(buffer)))
        buffer[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.reader.seek(offset, whence)

    def tell(self) -> int:
        return self.reader.tell()

    def close(self) -> None:
        if not self.closed:
            self.reader.close()
        super().close()


def file_uri(folder: str, path: str) -> str:
    """The URI of the file at ``path`` below ``folder`` (what the ledger and ``_source_file``
    record): ``file://`` and the absolute path for a local file (a ``file://`` folder decoded)."""
    if "://" not in folder or folder.startswith("file://"):
        return "file://" + str(Path(local_path(folder), path).absolute())
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
