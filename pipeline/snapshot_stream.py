"""One snapshot's layers, handed to the archive writer a chunk at a time as the probe pass runs.

The archive stores each layer's snapshot in chunks of about `archive.CHUNK_BYTES` along the
samples. The stream gathers each layer's probe batches until they fill one such chunk, hands that
block to the writer process and forgets it, so besides the probe batch the trainer holds less
than one chunk per layer, whatever the number of probe samples; the writer holds the blocks
queued to it.
Blocks start and end on chunk boundaries, so zarr writes whole chunks and never reads one back.
The rows land in the snapshot's row of the arrays before its commit point is raised, so no
reader sees them until the whole snapshot is on disk (pipeline.archive).

The stream also counts each layer's NaN/inf values (and, for a float16 archive, the values beyond
float16's range) as the batches pass, for the Recorder's `nonfinite` policy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.writer import SnapshotRows

FLOAT16_MAX = float(np.finfo(np.float16).max)


def nonfinite_counts(values: np.ndarray, float16: bool) -> tuple[int, int]:
    """(values that are NaN or inf, finite values beyond float16's range when `float16`)."""
    finite = np.isfinite(values)
    bad = int(values.size - finite.sum())
    over = int((np.abs(values[finite]) > FLOAT16_MAX).sum()) if float16 else 0
    return bad, over


def describe_nonfinite(layer: str, bad: int, over: int, size: int) -> str:
    what = [f"{bad} NaN/inf"] if bad else []
    what += [f"{over} beyond float16's range {FLOAT16_MAX:g}"] if over else []
    return f"layer {layer}: {' and '.join(what)} of {size} values"


class SnapshotStream:
    """Cuts one snapshot's per-batch layer outputs into chunk-sized blocks for `submit`.

    Parameters
    ----------
    index : the snapshot's row in the archive's arrays.
    chunk_rows : samples per archive chunk, per layer (the order of the recorded layers).
    float16 : store float16 (values are cast here, after they are counted).
    submit : receives each `SnapshotRows` block, in order.
    """

    def __init__(self, index: int, chunk_rows: dict[str, int], float16: bool,
                 submit: Callable[[SnapshotRows], None]):
        self.index, self.chunk_rows, self.float16, self.submit = index, chunk_rows, float16, submit
        self._pending: dict[str, list[np.ndarray]] = {layer: [] for layer in chunk_rows}
        self._start = dict.fromkeys(chunk_rows, 0)  # first sample not yet handed over
        self._counts = {layer: np.zeros(3, np.int64) for layer in chunk_rows}  # NaN/inf, > float16, all

    def add(self, outputs: dict[str, np.ndarray]) -> None:
        """One probe batch: every layer's output rows, float32."""
        for layer, values in outputs.items():
            self._counts[layer] += (*nonfinite_counts(values, self.float16), values.size)
            if self.float16:
                with np.errstate(over="ignore"):  # counted above; the policy decides
                    values = values.astype(np.float16)
            self._cut(layer, values)

    def finish(self) -> list[str]:
        """Hand over every layer's last rows; returns one line per layer holding values it
        should not (empty when all are finite)."""
        for layer, pending in self._pending.items():
            if pending:
                self._send(layer, np.concatenate(pending))
                pending.clear()
        return [describe_nonfinite(layer, bad, over, size)
                for layer, (bad, over, size) in self._counts.items() if bad or over]

    def _cut(self, layer: str, values: np.ndarray) -> None:
        """Complete the chunk the earlier batches began, send the batch's whole chunks as views
        of it (no copy of the batch), and keep the rest (less than a chunk, copied)."""
        pending, rows = self._pending[layer], self.chunk_rows[layer]
        first = rows - sum(len(part) for part in pending)  # rows that complete the open chunk
        if len(values) < first:
            pending.append(values)
            return
        self._send(layer, np.concatenate([*pending, values[:first]]) if pending else values[:first])
        pending.clear()
        end = first + (len(values) - first) // rows * rows
        for start in range(first, end, rows):
            self._send(layer, values[start:start + rows])
        if end < len(values):  # a copy: a view would keep the whole batch alive
            pending.append(values[end:].copy())

    def _send(self, layer: str, block: np.ndarray) -> None:
        self.submit(SnapshotRows(self.index, layer, self._start[layer], block))
        self._start[layer] += len(block)
