"""The small files bronze keeps beside its tables (:class:`~bronze_assets.lib.delta.storage.Storage`'s
file methods) and a landing folder, on a local root: listed as delta-rs' object store lists them,
and never through delta-rs' file system handler, whose listing holds the GIL while it waits for
delta-rs' runtime: a ``write_deltalake`` whose Python reader occupies that runtime then hangs the
process (deltalake 1.6.6)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from deltalake._internal import DeltaFileSystemHandler
from pyarrow import fs

from bronze_assets.contracts import LANDING_CONTRACTS
from bronze_assets.lib.delta import storage as storage_module
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load.landing_source import landing_files
from bronze_assets_tests.stores import Store

FILES = {"_bronze_checks/bz_x.key_uniqueness.json": b"{}", "bz_x/_delta_log/00000.json": b"[]",
         "bz_x/_delta_log/00001.json": b"[1]", "bz_x/_delta_log/sub/deep.json": b"{1}",
         "bz_x/part-0.parquet": b"PAR1", "bz_x/a b%é.json": b"x", "bz_x/.hidden": b"h",
         "bz_x/upload.json#17": b"in progress"}


def _handler(root: Path | str, folder: str, recursive: bool) -> list[tuple[str, int, int]]:
    infos = DeltaFileSystemHandler(table_uri=str(root), options=None, known_sizes=None) \
        .get_file_info_selector(folder, True, recursive)
    return sorted((i.path, int(i.size or 0), int(i.mtime_ns or 0)) for i in infos)


def test_a_local_roots_files_are_listed_read_and_written_as_the_object_store_does(tmp_path: Path) -> None:
    root = tmp_path / "bronze"
    for path, body in FILES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(body)
    files = [p for p, size, mtime in _handler(root, "bz_x", True) if mtime]  # files: folders have none
    entries = [(p.rsplit("/", 1)[-1], size, mtime)
               for p, size, mtime in _handler(root, "bz_x/_delta_log", False) if mtime]
    assert "bz_x/upload.json#17" not in files and [e[0] for e in entries] == ["00000.json", "00001.json"]
    for storage in (Storage(str(root)), Storage(f"file://{root}")):
        assert sorted(storage.list_files("bz_x")) == files
        assert storage.listing("bz_x/_delta_log") == entries
        assert storage.list_files("nothing_here") == [] == storage.listing("nothing_here")
        assert storage.read_file("bz_x/a b%é.json") == b"x" and storage.read_file("bz_x/none") is None
        storage.write_file("new/folder/f.json", b"1")
        storage.write_file("new/folder/f.json", b"2")  # replaced whole
        assert storage.read_file("new/folder/f.json") == b"2"
        assert storage.list_files("new") == ["new/folder/f.json"], "no temporary file is left or listed"
        storage.delete_file("new/folder/f.json")
        storage.delete_file("new/folder/f.json")  # gone already: nothing to do
        storage.delete_files(["bz_x/none", "new/none"])
        assert storage.list_files("new") == []
    assert Storage(str(tmp_path / "no_root_yet")).list_files("x") == []


def test_a_file_removed_while_its_folder_is_listed_is_left_out_not_the_whole_listing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log file removed between the folder's read and its entry's stat (delta-rs' expired-log
    cleanup, a fold removing its inbox files) is skipped, as the object store skips it."""
    log = tmp_path / "bronze" / "bz_x" / "_delta_log"
    log.mkdir(parents=True)
    for name in ("00000.json", "00001.json", "00002.json"):
        (log / name).write_text(name)
    scandir = os.scandir

    class Vanishing:
        """os.scandir whose first entry's file is removed once the folder has been read."""

        def __init__(self, path: str) -> None:
            with scandir(path) as entries:
                self.entries = sorted(entries, key=lambda e: e.name)
            os.remove(self.entries[0].path)

        def __enter__(self) -> list[os.DirEntry]:
            return self.entries

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(os, "scandir", Vanishing)
    listed = Storage(str(tmp_path / "bronze")).listing("bz_x/_delta_log")
    assert [name for name, _, _ in listed] == ["00001.json", "00002.json"]


def test_a_file_uri_root_is_the_folder_delta_rs_writes_its_tables_in(tmp_path: Path) -> None:
    """``file://`` roots are URLs: delta-rs decodes ``%20``, so the files beside the tables and the
    listings of their logs are in the folder it writes (not a folder named ``a%20b``)."""
    import pyarrow as pa
    from deltalake import write_deltalake

    storage = Storage(f"file://{tmp_path}/a%20b")
    write_deltalake(storage.uri("bz_x"), pa.table({"x": [1]}))
    storage.write_file("_bronze_checks/bz_x.json", b"{}")
    assert sorted(os.listdir(tmp_path)) == ["a b"]
    assert sorted(os.listdir(tmp_path / "a b")) == ["_bronze_checks", "bz_x"]
    expected = [(p.rsplit("/", 1)[-1], size, mtime) for p, size, mtime
                in _handler(storage.root, "bz_x/_delta_log", False) if mtime]
    assert storage.listing("bz_x/_delta_log") == expected and len(expected) == 1
    assert storage.list_files("bz_x/_delta_log") == ["bz_x/_delta_log/" + expected[0][0]]
    assert storage.read_file("_bronze_checks/bz_x.json") == b"{}"


def test_writers_of_the_same_file_never_share_a_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes writing one file each write their own temporary file beside it: process 12's
    35th write and process 123's 5th never take the same name (one would truncate and rename
    away the other's file while it writes)."""
    storage, target = Storage(str(tmp_path)), tmp_path / "_bronze_checks" / "bz_x.json"
    monkeypatch.setattr(os, "getpid", lambda: 12)
    monkeypatch.setattr(storage_module, "_WRITES", itertools.count(34))
    seen: list[str] = []
    real_open = open

    def recording_open(file: str, *args: object, **kwargs: object) -> object:
        seen.append(os.path.basename(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", recording_open)
    storage.write_file("_bronze_checks/bz_x.json", b"twelve")
    monkeypatch.setattr(os, "getpid", lambda: 123)
    monkeypatch.setattr(storage_module, "_WRITES", itertools.count(4))
    storage.write_file("_bronze_checks/bz_x.json", b"one-two-three")
    monkeypatch.undo()
    assert len(seen) == 2 and seen[0] != seen[1], seen
    assert all(name.startswith("bz_x.json#") and not storage_module.listed(name) for name in seen)
    assert target.read_bytes() == b"one-two-three" and os.listdir(target.parent) == ["bz_x.json"]


def test_a_local_landing_folder_is_listed_as_the_object_store_does(tmp_path: Path) -> None:
    contract = next(iter(LANDING_CONTRACTS.values()))
    folder = tmp_path / "landing" / contract.name
    for path, body in {"day=1/a b.json": b"{}", "day=1/_SUCCESS": b"", "b.csv": b"k\n1\n",
                       "c.parquet#3": b"in progress"}.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(body)
    expected = _handler(folder, "", True)
    filesystem, infos = landing_files(str(folder), None)
    assert sorted((i.path, int(i.size or 0), int(i.mtime_ns or 0)) for i in infos
                  if i.type == fs.FileType.File) == [e for e in expected if e[2]]
    assert all(not i.path.endswith("#3") for i in infos)
    with filesystem.open_input_stream("b.csv") as stream:
        assert stream.read() == b"k\n1\n"


# Each Delta write's batches come from a Python generator that waits (without the GIL) until it is
# released: delta-rs' runtime threads pulling them are all occupied, as they are while a load's
# read-ahead waits for its next batch. The release comes from another Python thread, after the
# listings: a listing that needs delta-rs' runtime while holding the GIL never returns.
# Arguments: the writes' folder, the root (or landing folder) listed, its options (JSON).
BESIDE_WRITES = """
import json, os, sys, threading, time
import pyarrow as pa
from deltalake import write_deltalake
from bronze_assets.lib.delta.storage import Storage
from bronze_assets.lib.load.landing_source import landing_files

tables, root, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
schema = pa.schema([("x", pa.int64())])
writers = max(2, os.cpu_count() or 2) + 2
entered, release = threading.Semaphore(0), threading.Event()

def batches():
    entered.release()
    release.wait()
    yield pa.record_batch([pa.array([1], pa.int64())], schema=schema)

def write(n):
    write_deltalake(f"{tables}/t{n}", pa.RecordBatchReader.from_batches(schema, batches()))

threads = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(writers)]
for t in threads:
    t.start()
for _ in range(writers - 2):  # delta-rs' runtime threads are all in a reader by now
    entered.acquire(timeout=20)
time.sleep(0.5)
threading.Timer(1.0, release.set).start()
"""
LISTING = """
storage = Storage(root, options)
found = storage.list_files("folder"), storage.listing("folder"), storage.read_file("folder/a.json")
landed = sorted(i.path for i in landing_files(f"{root}/folder", options or None)[1])
for t in threads:
    t.join()
print("listed", found[0], landed, found[2], "beside", writers, "writes")
"""
LANDING = """
filesystem, infos = landing_files(root, None)
with filesystem.open_input_stream("day=1/a b.json") as stream:
    body = stream.read()
for t in threads:
    t.join()
print("listed", sorted(i.path for i in infos), body, "beside", writers, "writes")
"""


def listed_beside_writes(tmp_path: Path, listing: str, tables: Path, root: str,
                         options: dict[str, str] | None = None, env: dict[str, str] | None = None) -> str:
    """What the script ``listing`` (after :data:`BESIDE_WRITES`) printed; fails the test if it hung."""
    script = tmp_path / "beside_writes.py"
    script.write_text(BESIDE_WRITES + listing)
    try:
        out = subprocess.run([sys.executable, str(script), str(tables), root, json.dumps(options or {})],
                             env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("the listing hung beside the writes: it waited for delta-rs' runtime holding the GIL")
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_listing_beside_writes_that_occupy_delta_rs_runtime_returns(tmp_path: Path, scheme: str) -> None:
    root = f"{scheme}{tmp_path / 'root'}"
    Storage(root).write_file("folder/a.json", b"{}")
    out = listed_beside_writes(tmp_path, LISTING, tmp_path / "root", root)
    assert "listed ['folder/a.json'] ['a.json'] b'{}' beside" in out, out


def test_an_object_store_landing_folder_is_listed_and_read_beside_writes_as_delta_rs_does(
        store: Store, tmp_path: Path) -> None:
    """A landing folder on an object store (no options of its own) is listed and read through
    obstore: the same entries as delta-rs' handler, and no hang beside writes whose Python
    readers occupy delta-rs' runtime (the handler's listing waits for that runtime holding the GIL)."""
    from deltalake.fs import DeltaStorageHandler

    landing = store.root.removesuffix("/bronze") + "/landing/shipment_events"
    Storage(landing).write_file("day=1/a b.json", b'{"event_id": 1}')
    Storage(landing).write_file("b.csv", b"k\n1\n")
    expected = fs.PyFileSystem(DeltaStorageHandler(landing, None)).get_file_info(
        fs.FileSelector("", recursive=True, allow_not_found=True))
    filesystem, infos = landing_files(landing, None)

    def entries(found: list[fs.FileInfo]) -> list[tuple[str, object, int, int]]:
        return sorted((i.path, i.type, int(i.size or 0), int(i.mtime_ns or 0)) for i in found)

    assert entries(infos) == entries(expected) and len(infos) == 3  # day=1, its file, b.csv
    with filesystem.open_input_stream("b.csv") as stream:
        assert stream.read() == b"k\n1\n"
    assert landing_files(store.root + "/nothing_here", None)[1] == []
    out = listed_beside_writes(tmp_path, LANDING, tmp_path / "root", landing)
    assert "listed ['b.csv', 'day=1', 'day=1/a b.json'] b'{\"event_id\": 1}' beside" in out, out


STORE_OPTIONS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL",
                 "AWS_ALLOW_HTTP", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
                 "AZURE_STORAGE_USE_EMULATOR")


def test_a_store_configured_by_its_options_is_read_through_obstore_beside_writes(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A root whose credentials, endpoint and client settings are the resource's options (delta-rs'
    names, ``AWS_ALLOW_HTTP`` among them, and delta-rs' own commit options) lists, reads and writes
    its files through obstore, and does not hang beside writes that occupy delta-rs' runtime."""
    options = {name: os.environ[name] for name in STORE_OPTIONS if name in os.environ}
    for name in options:
        monkeypatch.delenv(name)
    if store.root.startswith("s3://"):
        options |= {"aws_s3_allow_unsafe_rename": "true", "timeout": "30s"}
    options["OBJECT_STORE_CONCURRENCY_LIMIT"] = "16"  # delta-rs' limit of its store's requests
    assert storage_module.object_store(store.root, options) is not None
    storage = Storage(store.root, options)
    storage.write_file("folder/a.json", b'{"a": 1}')
    assert storage.read_file("folder/a.json") == b'{"a": 1}' and storage.read_file("folder/b.json") is None
    assert storage.list_files("folder") == ["folder/a.json"]
    out = listed_beside_writes(tmp_path, LISTING, tmp_path / "local", store.root, options, dict(os.environ))
    assert "listed ['folder/a.json'] ['a.json'] b'{\"a\": 1}' beside" in out, out


@pytest.mark.parametrize(("options", "taken"), [
    ({"AWS_ALLOW_HTTP": "true", "timeout": "5s", "aws_s3_locking_provider": "dynamodb", "region": "eu-west-1",
      "dynamodb_region": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, True),
    ({"AWS_PROFILE": "reporting"}, False),  # obstore has no profiles: delta-rs' handler
    ({"OBJECT_STORE_CONCURRENCY_LIMIT": "10", "region": "eu-west-1"}, True),  # delta-rs' own
    ({"aws_region": "eu-west-1", "region": "eu-west-2"}, False),
])
def test_delta_rs_options_are_given_to_obstore_by_their_meaning(options: dict[str, str], taken: bool) -> None:
    assert (storage_module.object_store("s3://bucket/bronze", options) is not None) is taken


def test_a_storage_value_keeps_one_object_store_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The files beside the tables reuse one obstore client (made in ≈5 ms, its connections kept)
    per storage value; another value, e.g. after a change of endpoint, makes its own."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    storage = Storage("s3://bucket/bronze", {"region": "eu-west-1"})
    first = storage._put_store()
    assert first is not None and storage._put_store() is first
    assert Storage("s3://bucket/bronze", {"region": "eu-west-1"})._put_store() is not first
    assert storage == Storage("s3://bucket/bronze", {"region": "eu-west-1"}), "the client is not compared"


@pytest.mark.parametrize(("options", "retry"), [
    ({"max_retries": "0", "retry_timeout": "5s", "backoff_config.init_backoff": "200ms",
      "backoff_config.max_backoff": "1m 30s", "backoff_config.base": "3"},
     {"max_retries": 0, "retry_timeout": timedelta(seconds=5), "backoff": {
         "init_backoff": timedelta(milliseconds=200), "max_backoff": timedelta(seconds=90), "base": 3.0}}),
    ({"max_retries": "2"}, {"max_retries": 2}),
    ({"retry_timeout": "10sec", "backoff.base": "1.5"},
     {"retry_timeout": timedelta(seconds=10), "backoff": {"base": 1.5}}),
])
def test_the_retry_options_delta_rs_takes_are_obstores_retry_config(
        options: dict[str, str], retry: dict[str, object]) -> None:
    """delta-rs retries every request of the root's store as its options say (``max_retries``,
    ``retry_timeout``, ``backoff_config.*``: object_store's RetryConfig); the obstore client of the
    files beside the tables retries as they say too, not 10 times over up to 180 s."""
    store = storage_module.object_store("s3://bucket/bronze", {"region": "eu-west-1", **options})
    assert store is not None
    taken = store.retry_config
    assert taken is not None
    expected_backoff = {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=15),
                        "base": 2.0} | dict(retry.get("backoff", {}))  # type: ignore[arg-type]
    defaults = {"max_retries": 10, "retry_timeout": timedelta(minutes=3)}
    expected = defaults | retry | {"backoff": expected_backoff}
    assert taken == expected


@pytest.mark.parametrize("options", [{"retry_timeout": "5 fortnights"}, {"max_retries": " 3"},
                                     {"backoff_config.base": "1_0"}])
def test_a_retry_option_obstore_would_read_otherwise_goes_to_delta_rs(options: dict[str, str]) -> None:
    """A value delta-rs may read another way than Python would (or refuse) is left to delta-rs'
    handler, which reads it as the tables' client does."""
    assert storage_module.object_store("s3://bucket/bronze", {"region": "eu-west-1", **options}) is None
