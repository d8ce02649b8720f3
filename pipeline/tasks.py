"""What a worker runs: one unit of tasks (cells of estimator entries), or a seed's Fisher traces.

A task is one (estimator entry, seed, split, layer) over the epochs still missing; a worker reads
the activations from the archive by path and returns small result vectors. Tasks of one method
that share a seed, a layer and their epochs (entries and splits) run as one unit that reads each
epoch once; where the estimator has a batched form (KDE), all their cells are one call. A chain
runs alone. This module imports no xarray (the results store is the client's:
`pipeline.estimate`), so workers start sooner.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sysconfig
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.archive import ArchiveReader
from pipeline.estimators import BUILTIN_METHODS, Estimator
from pipeline.uncertainty import (
    RESAMPLING,
    EstimatorOutputError,
    cell_estimate,
    option_outputs,
    row_entropy,
    saturation,
    split_options,
)


def entry_variables(definition: Estimator, options: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The results variables an estimator entry fills beyond I_XT and I_TY: (long name, units)."""
    return {**definition.outputs, **option_outputs(options)}


def entry_outputs(definition: Estimator, options: dict[str, Any]) -> list[str]:
    """The names of every results variable an estimator entry fills."""
    return ["I_XT", "I_TY", *entry_variables(definition, options)]



@dataclass(frozen=True)
class Task:
    """One chain of cells: an estimator entry on one seed, split and layer, over `epochs`.

    `carried` holds the parameters the first epoch receives from the epoch before it (an
    estimator's `carry`), e.g. Renyi's `sigma_prev`.
    """

    estimator: str
    table: dict[str, Any]
    definition: Estimator
    seed: int
    split: str
    layer: str
    epochs: tuple[int, ...]
    carried: tuple[tuple[str, float], ...] = ()

    def cell_label(self, epoch: int) -> str:
        """How the store's warnings name a cell: "<entry> seed <s> <split> epoch <e> <layer>"."""
        return f"{self.estimator} seed {self.seed} {self.split} epoch {epoch} {self.layer}"

    @property
    def key(self) -> str:
        span = f"{self.epochs[0]}-{self.epochs[-1]}-{len(self.epochs)}"
        return f"estimate-{self.estimator}-s{self.seed}-{self.split}-{self.layer}-e{span}"

    @property
    def cost(self) -> float:
        """Expected time, relative: cells x the estimator's cost x the resamples and baselines."""
        options = self.options
        resampled = options["n_resamples"] if options["uncertainty"] in RESAMPLING else 0
        return len(self.epochs) * self.definition.cost * (1 + resampled) * (2 if options["null"] else 1)

    @property
    def params(self) -> dict[str, Any]:
        """The estimator's own parameters (the cell options of pipeline.uncertainty left out)."""
        return split_options(self.table)[0]

    @property
    def options(self) -> dict[str, Any]:
        return split_options(self.table)[1]

    @property
    def outputs(self) -> list[str]:
        return entry_outputs(self.definition, self.options)

    @property
    def is_chain(self) -> bool:
        return self.definition.is_chain(self.params)

    @property
    def batch_key(self) -> tuple | None:
        """Tasks with the same key run as one unit, each epoch read once: through the estimator's
        batched form ("batched": plain cells of an estimator with one, whose parameters outside
        `batched_over` agree) or cell by cell ("cells": any other tasks of one method); None for
        a chain, which runs alone."""
        definition, options = self.definition, self.options
        if self.is_chain:
            return None
        where = (self.table["method"], self.seed, self.layer, self.epochs)
        if definition.batched is None or options["uncertainty"] != "none" or options["null"]:
            return ("cells", *where)
        fixed = sorted((k, repr(v)) for k, v in self.params.items() if k not in definition.batched_over)
        return ("batched", *where, tuple(fixed))


@dataclass(frozen=True)
class TaskBatch:
    """Tasks run as one unit of work by `run_batch`: one task, or tasks of one `batch_key`."""

    tasks: tuple[Task, ...]

    @property
    def key(self) -> str:
        first = self.tasks[0]
        return first.key if len(self.tasks) == 1 else f"batch{len(self.tasks)}-{first.key}"

    @property
    def cost(self) -> float:
        return sum(task.cost for task in self.tasks)


def batch_tasks(tasks: Sequence[Task]) -> list[TaskBatch]:
    """The tasks as units of work: those with the same `batch_key` together, every other alone."""
    batched: dict[tuple, list[Task]] = {}
    units = []
    for task in tasks:
        key = task.batch_key
        if key is None:
            units.append(TaskBatch((task,)))
        else:
            batched.setdefault(key, []).append(task)
    return units + [TaskBatch(tuple(group)) for group in batched.values()]


class TaskFailed(Exception):
    """A task's code raised what another try would raise again (a bug in an estimator, a rebuilt
    model that cannot run; `failures_reported` says which errors): so the unit's result reports it
    (`failure_result`) instead of raising, which would have Dask retry it. `problem` names the
    error, where it arose and the fix; `cell` where it happened first."""

    def __init__(self, cell: str, what: str, fix: str, err: BaseException):
        frame = _raising_frame(err)
        where = f" at {frame.filename}:{frame.lineno} in {frame.name}" if frame else ""
        raised = f"{what} raised {type(err).__name__}: {err}{where}"
        self.problem = f"{err if isinstance(err, EstimatorOutputError) else raised}; {fix}"
        self.cell = cell
        self.traceback = "".join(traceback.format_exception(err))
        super().__init__(f"{cell}: {self.problem}")


def estimator_failure(task: Task, epoch: int):
    """`failures_reported` for one cell of an estimator entry."""
    method = task.table["method"]
    fix = ("a bug in infoplane: please report it with the command and the traceback above"
           if method in BUILTIN_METHODS else
           "fix that function and run the same command again (the cells already stored are kept)")
    return failures_reported(task.cell_label(epoch), f"estimator {method!r}", fix, passed=(ValueError,))


NUMERIC_LIBRARIES = ("numpy", "scipy", "torch", "sklearn", "pandas", "numba", "jax")


def _library_folders() -> list[Path]:
    """Python's own folder and those of the numeric libraries an estimator calls (not imported)."""
    folders = [Path(sysconfig.get_paths()["stdlib"])]
    for name in NUMERIC_LIBRARIES:
        spec = importlib.util.find_spec(name)
        folders += [Path(folder) for folder in (spec.submodule_search_locations or [])] if spec else []
    return [folder.resolve() for folder in folders]


def _raising_frame(err: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of `err`'s traceback outside Python and the numeric libraries: the line
    of the estimator's own code that raised, or that called the library that did."""
    frames, libraries = traceback.extract_tb(err.__traceback__), _library_folders()
    for frame in reversed(frames):
        if not any(folder in Path(frame.filename).resolve().parents for folder in libraries):
            return frame
    return frames[-1] if frames else None


@contextlib.contextmanager
def failures_reported(cell: str, what: str, fix: str, passed: tuple[type[Exception], ...] = ()):
    """Turn an error of the code within into TaskFailed, but for the `passed` types (an
    estimator's ValueError: its NaN cell and warning) and running out of memory (which another
    try, on a less loaded worker, may not)."""
    try:
        yield
    except (*passed, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - reported with its traceback, not retried
        raise TaskFailed(cell, what, fix, err) from err


def failure_result(failed: TaskFailed, tasks: int) -> dict[str, Any]:
    """What a worker returns for a unit whose code raised (see TaskFailed)."""
    return {"failure": failed.problem, "cell": failed.cell, "traceback": failed.traceback, "tasks": tasks}


def _cell(task: Task, x: np.ndarray, t: np.ndarray, y: np.ndarray, params: dict[str, Any], h_x: float,
          epoch: int, messages: list[str]) -> dict[str, float]:
    """One cell of a task; a ValueError becomes NaN plus a warning, and so does a NaN or infinite
    I_XT or I_TY the estimator returns without saying why; other errors: `estimator_failure`."""
    where = task.cell_label(epoch)
    try:
        with estimator_failure(task, epoch):
            out = cell_estimate(task.definition, x, t, y, params, task.options, input_entropy=h_x)
    except ValueError as err:
        messages.append(f"{where}: {err}")
        return {"I_XT": np.nan, "I_TY": np.nan}
    odd = [f"{name} = {out[name]}" for name in ("I_XT", "I_TY") if not np.isfinite(float(out[name]))]
    if odd:
        messages.append(f"{where}: the estimator returned {', '.join(odd)}")
    return out


def _result(task: Task, cells: list[dict[str, float]], messages: list[str], labelled: bool) -> dict[str, Any]:
    """What a worker returns for a task: each output's values over its epochs."""
    values = {name: np.array([float(out.get(name, np.nan)) for out in cells]) for name in task.outputs}
    if not labelled:  # without labels no I(T;Y) exists: one class stood in
        values.update({name: np.full(len(cells), np.nan) for name in values if name.startswith("I_TY")})
    return {"task": task, "values": values, "warnings": messages}


def run_task(archive_path: str, task: Task) -> dict[str, Any]:
    """Compute one task's cells (runs on a worker). ValueErrors become NaN plus a warning."""
    torch.set_num_threads(1)  # one single-threaded worker per core
    archive = ArchiveReader(archive_path)
    index = archive.split_index(task.split)
    x, y = archive.inputs[index], archive.split_labels(index)
    carried = dict(task.carried)
    cells, messages = [], []
    read = archive.layer_reader(task.seed, task.layer)
    h_x = row_entropy(x)  # the I(X;T) ceiling, once a task
    for epoch in task.epochs:
        out = _cell(task, x, read(epoch)[index], y, {**task.params, **carried}, h_x, epoch, messages)
        if task.is_chain:
            carried.update({param: out[output] for output, param in task.definition.carry.items()
                            if np.isfinite(out.get(output, np.nan))})
        cells.append(out)
    return _result(task, cells, messages, archive.labels is not None)


def run_batch(archive_path: str, batch: TaskBatch) -> list[dict[str, Any]]:
    """Compute a unit's tasks (runs on a worker): one task by `run_task`; tasks of one batch key
    by reading each epoch once, then calling the estimator's batched form on every (parameters,
    split) of them, or each task's cell in turn. An epoch whose batched call raises a ValueError
    is computed cell by cell. A unit whose estimator fails returns one `failure_result`."""
    try:
        if len(batch.tasks) == 1:
            return [run_task(archive_path, batch.tasks[0])]
        return _run_together(archive_path, batch)
    except TaskFailed as failed:
        return [failure_result(failed, len(batch.tasks))]


def _run_together(archive_path: str, batch: TaskBatch) -> list[dict[str, Any]]:
    """The tasks of one batch key (see run_batch)."""
    torch.set_num_threads(1)
    tasks, first = batch.tasks, batch.tasks[0]
    archive = ArchiveReader(archive_path)
    x = archive.inputs
    y = archive.split_labels(np.arange(len(x)))
    splits = list(dict.fromkeys(task.split for task in tasks))
    index = {split: archive.split_index(split) for split in splits}
    h_x = {split: row_entropy(x[rows]) for split, rows in index.items()}
    settings = list({repr(sorted(task.params.items())): task.params for task in tasks}.values())
    which = [(settings.index(task.params), splits.index(task.split)) for task in tasks]
    batched = first.batch_key[0] == "batched"
    cells: list[list[dict[str, float]]] = [[] for _ in tasks]
    messages: list[list[str]] = [[] for _ in tasks]
    read = archive.layer_reader(first.seed, first.layer)
    xs = {split: x[rows] for split, rows in index.items()}
    ys = {split: y[rows] for split, rows in index.items()}
    for epoch in first.epochs:
        t = read(epoch)
        planes = None
        if batched:
            try:
                with estimator_failure(first, epoch):
                    planes = first.definition.batched(x, t, y, settings, [index[split] for split in splits])
            except ValueError:
                pass  # each cell alone, its error recorded
        ts = {split: t[rows] for split, rows in index.items()} if planes is None else {}
        for k, task in enumerate(tasks):
            split, params = task.split, task.params
            if planes is None:
                out = _cell(task, xs[split], ts[split], ys[split], params, h_x[split], epoch, messages[k])
            else:
                out = planes[which[k][0]][which[k][1]]
                out = {**out, **saturation(task.definition, out, h_x[split], ys[split], task.params)}
            cells[k].append(out)
    labelled = archive.labels is not None
    return [_result(task, cells[k], messages[k], labelled) for k, task in enumerate(tasks)]


@dataclass(frozen=True)
class FisherTask:
    """Fisher traces of every layer of one seed at `epochs`."""

    seed: int
    epochs: tuple[int, ...]
    probe_size: int
    label_seeds: int

    @property
    def key(self) -> str:
        return f"fisher-s{self.seed}-e{self.epochs[0]}-{len(self.epochs)}"


FISHER_FIX = ("the rebuilt model must take the archived inputs as its one argument and return class "
              "logits; or leave the Fisher traces out (`--set estimate.fisher=false`)")


def run_fisher_task(archive_path: str, task: FisherTask) -> dict[str, Any]:
    """Fisher traces of every layer at the task's epochs, from the archived weights; an error of
    the rebuilt model comes back as a `failure_result` (see TaskFailed)."""
    from pipeline.fisher import balanced_probe, fisher_traces, rebuild_model

    torch.set_num_threads(1)
    archive = ArchiveReader(archive_path)
    train = archive.split_index("train" if "train" in archive.split_names else "all")
    probe = train[balanced_probe(archive.labels[train], task.probe_size)]
    inputs = torch.as_tensor(archive.inputs[probe])
    model = rebuild_model(archive)
    state = model.state_dict()
    traces = []
    try:
        for epoch in task.epochs:
            for name, values in archive.weights(task.seed, epoch).items():
                state[name] = torch.as_tensor(values)
            with failures_reported(f"Fisher traces of seed {task.seed} at epoch {epoch}", "the model",
                                   FISHER_FIX):
                model.load_state_dict(state)
                result = fisher_traces(model, inputs, archive.layer_parameters, task.label_seeds)
            traces.append([result.get(layer, np.nan) for layer in archive.layers])
    except TaskFailed as failed:
        return failure_result(failed, 1)
    return {"seed": task.seed, "epochs": list(task.epochs), "layers": archive.layers,
            "traces": np.asarray(traces)}
