"""The first pass's typed landing records in local Arrow files, so the staging of landing files
keeps memory bounded by a block, not by the files."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from bronze_assets.lib.delta.staging import staged_reader


class Spill:
    """The first pass's typed blocks in local Arrow files, one per set of columns (a column found
    later starts a new file), read back in order."""

    def __init__(self, stage: Path, name: str) -> None:
        self.stage, self.name = stage, name
        self.paths: list[Path] = []
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._sink: pa.OSFile | None = None
        self._schema: pa.Schema | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None or self._schema != batch.schema:
            self.close()
            fd, raw = tempfile.mkstemp(prefix=f"{self.name}-read-", suffix=".arrow", dir=self.stage)
            os.close(fd)
            self.paths.append(Path(raw))
            self._sink = pa.OSFile(raw, "wb")
            self._writer, self._schema = pa.ipc.new_file(self._sink, batch.schema), batch.schema
        self._writer.write_batch(batch)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._sink is not None:
            self._sink.close()
        self._writer = self._sink = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The spilled blocks in order, each mapped on its own (memory holds the blocks in use)."""
        self.close()
        for path in self.paths:
            yield from staged_reader(path)

    def remove(self) -> None:
        self.close()
        for path in self.paths:
            with contextlib.suppress(OSError):
                path.unlink()
