"""The archive writer process: training hands each snapshot over and never waits on disk.

A separate process (not a thread) so that zarr's encoding and file I/O do not compete with the
training loop for the GIL. The queue is bounded: if the disk cannot keep up, training slows
down rather than memory growing without limit. A writer whose trainer died exits within half a
second, committing nothing more, and holds an exclusive lock on the seed while alive, so a
resumed trainer waits for an orphaned writer instead of racing it. Ctrl-C is the trainer's: the
writer ignores it, and stores what was handed to it when the trainer closes it.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import queue
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.archive import ArchiveError, SeedWriter
from pipeline.child_process import exit_with_parent, main_module_hidden


@dataclass
class Commit:
    """Everything written at one commit point, in the order it is written."""

    committed_snapshots: int
    history_through: int
    history_first: int
    history: dict[str, np.ndarray]
    status: str = "training"
    message: str = ""
    snapshot_index: int | None = None  # its activations came before it as SnapshotRows
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    grad_mean: np.ndarray | None = None
    grad_std: np.ndarray | None = None
    checkpoint: bytes = b""
    snapshot_epochs: list[int] | None = None  # the seed's committed epochs after this commit


@dataclass
class SnapshotRows:
    """Rows `start:start + len(values)` of one layer's snapshot `index`, written before the
    Commit of that snapshot (pipeline.snapshot_stream): invisible to readers until it lands."""

    index: int
    layer: str
    start: int
    values: np.ndarray


def atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def apply_commit(writer: SeedWriter, ckpt_dir: Path, commit: Commit) -> None:
    """Snapshot data (after its activation rows), then history rows, then the resume checkpoint,
    then the commit point."""
    index = commit.snapshot_index
    files = None
    if index is not None:
        files = writer.write_snapshot(index, commit.weights, commit.grad_mean, commit.grad_std)
        if commit.checkpoint:
            atomic_write(ckpt_dir / f"snapshot_{index}.pt", commit.checkpoint)
    writer.write_history(commit.history_first, commit.history)
    writer.commit(commit.committed_snapshots, commit.history_through, commit.status, commit.message,
                  commit.snapshot_epochs, files)
    if index is not None:  # the last two checkpoints are enough to resume
        (ckpt_dir / f"snapshot_{index - 2}.pt").unlink(missing_ok=True)


def lock_file(folder: Path, name: str, wait: bool, busy: str,
              error: type[Exception] = ArchiveError) -> int:
    """Take the exclusive lock `folder/<name>.lock`; returns its descriptor (close it to release).
    Without `wait`, a lock held elsewhere raises `error` saying `busy`."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{name}.lock", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        raise error(busy) from None
    return fd


def lock_seed(ckpt_dir: Path, name: str, wait: bool) -> int:
    """Take an exclusive lock file in the seed's checkpoint folder; returns its descriptor."""
    return lock_file(ckpt_dir, name, wait, f"another process is training this seed ({ckpt_dir}); "
                     "wait for it or stop it before starting again")


def _writer_main(archive_path: str, seed: int, ckpt_dir: str, jobs: multiprocessing.Queue,
                 errors: multiprocessing.Queue, parent: int, applied: Any) -> None:
    # Ctrl-C reaches the whole process group: the trainer decides (it drains this writer on an
    # interrupt, or dies and leaves it to exit uncommitted); a writer killed by it mid-queue
    # would turn the interrupt into a "writing the archive failed" error
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent)  # never commit for the dead, even when blocked on a half-sent item
    lock = lock_seed(Path(ckpt_dir), "writer", wait=True)
    try:
        writer = SeedWriter(Path(archive_path), seed)
        while True:
            item = jobs.get()  # an orphaned writer is ended by `exit_with_parent`, blocked or not
            if item is None or os.getppid() != parent:  # orphaned: never commit for the dead
                return
            if isinstance(item, SnapshotRows):
                writer.write_rows(item.index, item.layer, item.start, item.values)
            else:
                apply_commit(writer, Path(ckpt_dir), item)
                applied.value += 1  # one writer process: no other hand on it
    except OSError as err:  # disk full, read-only or vanished storage: say so, and the fix
        errors.put(f"{err.strerror or err} ({err.filename or archive_path}): free space or make the "
                   "folder writable, then run the same command again; committed snapshots are kept")
    except BaseException as err:  # noqa: BLE001 - reported to the trainer
        errors.put(f"{type(err).__name__}: {err}")
    finally:
        os.close(lock)


class WriterProcess:
    """Owns the writer process of one seed. `submit` queues snapshot rows or a Commit; `close`
    drains and joins. `item_bytes`: the largest item's size, which bounds the queue's length."""

    def __init__(self, archive_path: Path, seed: int, ckpt_dir: Path, item_bytes: int,
                 max_pending_bytes: int = 256 * 2**20):
        # Wait for an orphaned writer of a killed trainer to exit before starting ours.
        os.close(lock_seed(ckpt_dir, "writer", wait=True))
        context = multiprocessing.get_context("spawn")
        # Early log-spaced snapshots come every epoch: absorb that burst, bounded in bytes.
        self._jobs = context.Queue(max(2, max_pending_bytes // max(item_bytes, 1)))
        self._errors = context.Queue()
        self._applied = context.Value("q", 0, lock=False)  # commits written, counted by the writer
        self._submitted = 0  # commits queued
        self._process = context.Process(
            target=_writer_main, name=f"archive-writer-{seed}", daemon=False,
            args=(str(archive_path), seed, str(ckpt_dir), self._jobs, self._errors, os.getpid(),
                  self._applied))
        with main_module_hidden():
            self._process.start()

    def submit(self, item: Commit | SnapshotRows) -> None:
        self._put(item)
        self._submitted += isinstance(item, Commit)

    def wait(self, poll_s: float = 0.01) -> None:
        """Return once every Commit submitted so far is written; raise what the writer reported."""
        while self._applied.value < self._submitted:
            self._raise()  # the writer's error, or its death: a writer alive only waits for work
            time.sleep(poll_s)

    def close(self) -> None:
        """Queue the end, wait for the writer to drain, and raise what it reported."""
        self._put(None)
        while self._process.is_alive():
            self._process.join(timeout=1.0)
        self._raise(finished=True)

    def _put(self, item: Commit | SnapshotRows | None) -> None:
        # Bounded waits only: a writer that died leaves a full queue nobody will ever read.
        while True:
            self._raise()
            try:
                self._jobs.put(item, timeout=1.0)
                return
            except queue.Full:
                continue

    def _raise(self, finished: bool = False) -> None:
        """Raise the writer's error, or its death; `finished`: it was told to stop."""
        if self._process.is_alive():
            try:
                message = self._errors.get_nowait()
            except queue.Empty:
                return
        else:
            try:  # a dead writer's last words are in the pipe: its exit waited for them to be sent
                message = self._errors.get(block=False)
            except queue.Empty:
                if finished and self._process.exitcode == 0:
                    return
                message = f"the writer process died (exit code {self._process.exitcode})"
        self._jobs.cancel_join_thread()  # nobody reads the queue any more: do not wait to flush it
        raise ArchiveError(f"writing the archive failed: {message}")
