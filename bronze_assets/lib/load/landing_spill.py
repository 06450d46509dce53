"""The first pass's staged landing rows in local Arrow files, so the staging of landing files
keeps memory bounded by a block, not by the files; the last file can become the staging file
itself (no second copy of the rows)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa

from bronze_assets.lib.delta.staged_file import staged_reader


class Spill:
    """The first pass's blocks in local Arrow files, one per set of columns (a column found later
    starts a new file), read back in order; the file being written stays open until
    :meth:`batches` or :meth:`finish` closes it."""

    def __init__(self, stage: Path, name: str) -> None:
        self.stage, self.name = stage, name
        self.paths: list[Path] = []
        self.counts: list[int] = []  # batches per file
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._sink: pa.OSFile | None = None
        self._schema: pa.Schema | None = None

    @property
    def open_schema(self) -> pa.Schema | None:
        """The schema of the file still being written (None: none is)."""
        return self._schema if self._writer is not None else None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None or self._schema != batch.schema:
            self.close()
            fd, raw = tempfile.mkstemp(prefix=f"{self.name}-read-", suffix=".arrow", dir=self.stage)
            os.close(fd)
            self.paths.append(Path(raw))
            self.counts.append(0)
            self._sink = pa.OSFile(raw, "wb")
            self._writer, self._schema = pa.ipc.new_file(self._sink, batch.schema), batch.schema
        self._writer.write_batch(batch)
        self.counts[-1] += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._sink is not None:
            self._sink.close()
        self._writer = self._sink = None

    def batches(self, closed_only: bool = False) -> Iterator[pa.RecordBatch]:
        """The spilled blocks in order, each mapped on its own (memory holds the blocks in use);
        ``closed_only``: those of the files before the one still open (which stays open)."""
        if not closed_only:
            self.close()
        paths = self.paths[:-1] if closed_only and self._writer is not None else list(self.paths)
        for path in paths:
            yield from staged_reader(path)

    def finish(self, more: Iterable[pa.RecordBatch]) -> Path:
        """Append ``more`` (in the open file's schema) to the open file, close it and hand it over
        (the caller removes it)."""
        assert self._writer is not None, "no spill file is open"
        for batch in more:
            self._writer.write_batch(batch)
        self.close()
        self.counts.pop()
        return self.paths.pop()

    def remove(self) -> None:
        self.close()
        for path in self.paths:
            with contextlib.suppress(OSError):
                path.unlink()
