"""Listing the small files beside the tables of a local root: the same answer as delta-rs' object
store gives, without its file system handler, whose listing holds the GIL while it waits for
delta-rs' runtime (a ``write_deltalake`` on other threads then hangs the process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from deltalake._internal import DeltaFileSystemHandler
from pyarrow import fs

from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load.landing_source import landing_files


def _handler_listing(root: Path, folder: str, recursive: bool) -> list[tuple[str, int, int]]:
    infos = DeltaFileSystemHandler(table_uri=str(root), options=None, known_sizes=None) \
        .get_file_info_selector(folder, True, recursive)
    return sorted((i.path, int(i.size), int(i.mtime_ns)) for i in infos if i.type == fs.FileType.File)


def test_a_local_roots_listing_equals_the_object_stores(tmp_path: Path) -> None:
    root = tmp_path / "bronze"
    for path, body in {"_bronze_checks/bz_x.key_uniqueness.json": b"{}", "bz_x/_delta_log/00000.json": b"[]",
                       "bz_x/_delta_log/00001.json": b"[1]", "bz_x/_delta_log/sub/deep.json": b"{1}",
                       "bz_x/part-0.parquet": b"PAR1"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(body)
    every = [p for p, _, _ in _handler_listing(root, "bz_x", True)]
    log = [(p.rsplit("/", 1)[-1], size, mtime)
           for p, size, mtime in _handler_listing(root, "bz_x/_delta_log", False)]
    for storage in (Storage(str(root)), Storage(f"file://{root}")):
        assert sorted(storage.list_files("bz_x")) == every == [
            "bz_x/_delta_log/00000.json", "bz_x/_delta_log/00001.json", "bz_x/_delta_log/sub/deep.json",
            "bz_x/part-0.parquet"]
        assert storage.listing("bz_x/_delta_log") == log  # files only (the handler also gave "sub")
        assert [name for name, _, _ in storage.listing("bz_x/_delta_log")] == ["00000.json", "00001.json"]
        assert storage.list_files("_bronze_checks") == ["_bronze_checks/bz_x.key_uniqueness.json"]
        assert storage.list_files("nothing_here") == [] and storage.listing("nothing_here") == []
    assert Storage(str(tmp_path / "no_root_yet")).list_files("x") == []


def test_a_local_landing_folders_listing_equals_the_object_stores(tmp_path: Path) -> None:
    from deltalake.fs import DeltaStorageHandler

    folder = tmp_path / "landing" / "shipment_events"
    for path in ("2026/12/07/a.jsonl", "2026/12/07/_SUCCESS", "b.jsonl", ".tmp"):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(path)
    selector = fs.FileSelector("", recursive=True, allow_not_found=True)
    expected = fs.PyFileSystem(DeltaStorageHandler(str(folder), None)).get_file_info(selector)

    def entries(infos: list[fs.FileInfo]) -> list[tuple]:
        return sorted((i.path, i.type, i.size, i.mtime_ns) if i.type == fs.FileType.File else (i.path, i.type)
                      for i in infos)

    for given in (str(folder), f"file://{folder}"):
        filesystem, infos = landing_files(given, None)
        assert entries(infos) == entries(expected) and len(infos) == 7  # 4 files, 3 folders
        with filesystem.open_input_stream("2026/12/07/a.jsonl") as stream:
            assert stream.read() == b"2026/12/07/a.jsonl"
    assert landing_files(str(tmp_path / "none"), None)[1] == []


LISTING_BESIDE_WRITES = """
import os, sys, threading
import pyarrow as pa
from deltalake import write_deltalake
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load.landing_source import landing_files

root = sys.argv[1]
storage = Storage(root)
os.makedirs(f"{root}/folder")
open(f"{root}/folder/a.json", "w").write("{}")
schema = pa.schema([("x", pa.int64())])

def batches():
    for i in range(3000):
        sum(range(2000))  # Python work, with the GIL, on delta-rs' runtime thread pulling the batch
        yield pa.record_batch([pa.array(range(i, i + 10), pa.int64())], schema=schema)

def write(k):
    write_deltalake(f"{root}/t{k}", pa.RecordBatchReader.from_batches(schema, batches()))

# more writes than delta-rs' runtime has threads (one per core): every one of them pulls batches
writers = [threading.Thread(target=write, args=(k,)) for k in range((os.cpu_count() or 2) + 1)]
for w in writers:
    w.start()
listed = 0
while any(w.is_alive() for w in writers):
    assert storage.list_files("folder") == ["folder/a.json"]
    assert [name for name, _, _ in storage.listing("folder")] == ["a.json"]
    assert [i.path for i in landing_files(f"{root}/folder", None)[1]] == ["a.json"]  # a landing folder
    listed += 1
for w in writers:
    w.join()
print(listed)
"""


def test_listing_beside_writes_from_python_batches_does_not_hang(tmp_path: Path) -> None:
    """Through delta-rs' handler this hung at once (3 of 3 runs, each killed after 30-60 s: the
    listing thread holding the GIL, both runtime threads waiting for it in the batch reader)."""
    script = tmp_path / "listing.py"
    script.write_text(textwrap.dedent(LISTING_BESIDE_WRITES))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "bronze")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) > 0  # it listed while the writes ran
