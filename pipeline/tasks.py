"""What a worker runs: one task's cells of an estimator entry, or a seed's Fisher traces.

A task is one (estimator entry, seed, split, layer) over the epochs still missing; a worker reads
the activations from the archive by path and returns small result vectors. This module imports
no xarray (the results store is the client's: `pipeline.estimate`), so workers start sooner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.archive import ArchiveReader
from pipeline.estimators import Estimator
from pipeline.uncertainty import RESAMPLING, cell_estimate, option_outputs, row_entropy, split_options


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


def run_task(archive_path: str, task: Task) -> dict[str, Any]:
    """Compute one task's cells (runs on a worker). ValueErrors become NaN plus a warning."""
    torch.set_num_threads(1)  # one single-threaded worker per core
    archive = ArchiveReader(archive_path)
    index = archive.split_index(task.split)
    x = archive.inputs[index]
    # Without labels no I(T;Y) exists: one class stands in, and I_TY is stored as NaN.
    y = archive.split_labels(index)
    params, options, chain, outputs = task.params, task.options, task.is_chain, task.outputs
    carried = dict(task.carried)
    values: dict[str, list[float]] = {name: [] for name in outputs}
    messages = []
    read = archive.layer_reader(task.seed, task.layer)
    h_x = row_entropy(x)  # the I(X;T) ceiling, once a task
    for epoch in task.epochs:
        t = read(epoch)[index]
        kwargs = {**params, **carried} if chain else params
        try:
            out = cell_estimate(task.definition, x, t, y, kwargs, options, input_entropy=h_x)
        except ValueError as err:
            out = {"I_XT": np.nan, "I_TY": np.nan}
            messages.append(f"{task.estimator} seed {task.seed} {task.split} epoch {epoch} "
                            f"{task.layer}: {err}")
        if chain:
            carried.update({param: out[output] for output, param in task.definition.carry.items()
                            if np.isfinite(out.get(output, np.nan))})
        for name in outputs:
            values[name].append(float(out.get(name, np.nan)))
    if archive.labels is None:
        for name in [n for n in values if n.startswith("I_TY")]:
            values[name] = [np.nan] * len(task.epochs)
    return {"task": task, "values": {k: np.asarray(v) for k, v in values.items()}, "warnings": messages}


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


def run_fisher_task(archive_path: str, task: FisherTask) -> dict[str, Any]:
    """Fisher traces of every layer at the task's epochs, from the archived weights."""
    from pipeline.fisher import balanced_probe, fisher_traces, rebuild_model

    torch.set_num_threads(1)
    archive = ArchiveReader(archive_path)
    train = archive.split_index("train" if "train" in archive.split_names else "all")
    probe = train[balanced_probe(archive.labels[train], task.probe_size)]
    inputs = torch.as_tensor(archive.inputs[probe])
    model = rebuild_model(archive)
    state = model.state_dict()
    traces = []
    for epoch in task.epochs:
        for name, values in archive.weights(task.seed, epoch).items():
            state[name] = torch.as_tensor(values)
        model.load_state_dict(state)
        result = fisher_traces(model, inputs, archive.layer_parameters, task.label_seeds)
        traces.append([result.get(layer, np.nan) for layer in archive.layers])
    return {"seed": task.seed, "epochs": list(task.epochs), "layers": archive.layers,
            "traces": np.asarray(traces)}
