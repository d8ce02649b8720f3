"""Record any `torch.nn.Module`, trained by any loop, into an infoplane archive.

    from pipeline.record import Recorder
    with Recorder("runs/my_run/archive.zarr", model, layers=["features.*", "head"],
                  inputs=x_probe, labels=y_probe, splits={"train": idx_tr, "test": idx_te},
                  seed=0, name="my_run") as rec:
        for epoch in range(n_epochs):
            ...                                   # your own training step(s)
            rec.snapshot(epoch, loss=train_loss)  # probe forward pass; hooks capture the layers

Layers are module names of `model.named_modules()`, exact or glob: `*` matches within one
dotted segment, `**` zero or more whole segments (`"blocks.*"` are the direct children of
`blocks`, `"**.proj"` every module called `proj`).
They are recorded in `named_modules()` order, each by a forward hook that exists only during
the probe pass, so training pays nothing. A module returning a tuple or list records its first
element; `select={"layer": key}` picks another element or a dict entry. The last recorded layer
is the output layer unless `output_layer=` names another. Each layer's parameters (for gradient
statistics and Fisher information) are those of the modules that run after the previous
recorded layer and up to it, in the probe pass's execution order.

Snapshots go through the archive's writer process (pipeline.writer), a chunk at a time as the
probe pass runs (pipeline.snapshot_stream): a snapshot is committed after all its chunks, the
history rows and, when an `optimizer` is given, a resume checkpoint.
A restarted script resumes: `rec.resume()` restores model, optimizer and RNG states and returns
the last committed epoch, and `rec.snapshot` on an epoch already committed does nothing.

Without a torch model (`Recorder(path, None, layers={name: shape}, ...)`), each snapshot passes
its layers as arrays (`rec.snapshot(epoch, activations={...})`), computed by any framework or
read from files; they take the same path to the writer as the probe pass's batches.
"""

from __future__ import annotations

import atexit
import contextlib
import fnmatch
import io
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.archive import (
    HISTORY_VARIABLES,
    ArchiveError,
    ArchiveReader,
    ArchiveSpec,
    LayerSpec,
    SeedWriter,
    create_archive,
    prepare_for_writing,
)
from pipeline.arrays import as_numpy
from pipeline.errors import KnownFailure
from pipeline.models import state_arrays
from pipeline.provenance import provenance, training_environment
from pipeline.record_checks import (
    NonFiniteActivations,
    RecordError,
    activation_arrays,
    array_inputs,
    check_model_spec_builds,
    check_options,
    check_without_model,
    class_codes,
    epoch_number,
    history_metrics,
    layer_shapes,
    seed_number,
    split_codes,
)
from pipeline.runs import RunPaths
from pipeline.snapshot_stream import SnapshotStream
from pipeline.writer import Commit, WriterProcess, lock_file, lock_seed

PROBE_BATCH = 2048


def match_layers(model: nn.Module, patterns: Sequence[str] | str) -> list[str]:
    """Module names matching `patterns` (exact or glob; one string is one pattern), in
    `named_modules()` order."""
    names = [name for name, _ in model.named_modules() if name]
    listed = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise RecordError("layers: name at least one module to record (exact or glob, e.g. "
                          f"['features.*']); modules are {listed}")
    chosen = set()
    for pattern in patterns:
        hits = [n for n in names if _glob(pattern.split("."), n.split("."))]
        if not hits:
            raise RecordError(f"layer pattern {pattern!r} matches no module; modules are {listed}")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def _glob(pattern: list[str], name: list[str]) -> bool:
    if not pattern:
        return not name
    if pattern[0] == "**":
        return any(_glob(pattern[1:], name[i:]) for i in range(len(name) + 1))
    return bool(name) and fnmatch.fnmatchcase(name[0], pattern[0]) and _glob(pattern[1:], name[1:])


def _select(module_name: str, output: Any, key: int | str | None) -> torch.Tensor:
    """The recorded tensor of one module's output (a tensor, a tuple/list element, a dict entry)."""
    if key is None and isinstance(output, tuple | list):
        key = 0
    if key is not None:
        try:
            output = output[key]
        except (KeyError, IndexError, TypeError):
            raise RecordError(f"module {module_name!r}: its output {type(output).__name__} has no "
                              f"element {key!r}; set select={{{module_name!r}: <index or key>}}") from None
    if isinstance(output, dict):
        raise RecordError(f"module {module_name!r} returns a dict with keys {list(output)}; set "
                          f"select={{{module_name!r}: <key>}} to record one of them")
    if not isinstance(output, torch.Tensor):
        raise RecordError(f"module {module_name!r} returns {type(output).__name__}, not a tensor; "
                          "record a module that returns one, or select an element")
    return output


class _Hooks:
    """Forward hooks on the recorded modules (and, for the layout, on every parameter owner)."""

    def __init__(self, model: nn.Module, layers: list[str], select: dict[str, int | str],
                 trace_parameters: bool = False):
        modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self.events: list[tuple[str, str]] = []  # ("parameters" | "layer", module name)
        self.handles = []
        if trace_parameters:
            for name, module in modules.items():
                if any(True for _ in module.parameters(recurse=False)):
                    self.handles.append(module.register_forward_hook(self._trace(name)))
        for name in layers:
            self.handles.append(modules[name].register_forward_hook(self._capture(name, select.get(name))))

    def _trace(self, name: str):
        def hook(module, args, output):
            self.events.append(("parameters", name))
        return hook

    def _capture(self, name: str, key: int | str | None):
        def hook(module, args, output):
            if name in self.outputs:
                raise RecordError(f"module {name!r} ran twice in one forward pass; record a module "
                                  "that runs once (e.g. its parent block)")
            # a float32 copy on the CPU, taken now: a later in-place module (ReLU(inplace=True),
            # a shortcut's `+=`) would otherwise change the values before they are read
            self.outputs[name] = _select(name, output, key).detach().to("cpu", torch.float32, copy=True)
            self.events.append(("layer", name))
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def input_parts(inputs: Any) -> list[Any]:
    """The arrays of probe inputs given as one array, a tuple (positional arguments of the
    forward) or a dict (keyword arguments); the first is the one archived as X."""
    if isinstance(inputs, dict):
        return list(inputs.values())
    return list(inputs) if isinstance(inputs, tuple) else [inputs]


def _rows(inputs: Any, rows: slice) -> Any:
    """Rows of every part, in the inputs' own form."""
    if isinstance(inputs, dict):
        return {key: part[rows] for key, part in inputs.items()}
    return tuple(part[rows] for part in inputs) if isinstance(inputs, tuple) else inputs[rows]


def _forward(model: nn.Module, batch: torch.Tensor | Any) -> None:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def tensor(x: Any) -> Any:
        return torch.from_numpy(x).to(device) if isinstance(x, np.ndarray) else x
    if isinstance(batch, dict):
        model(**{key: tensor(part) for key, part in batch.items()})
    elif isinstance(batch, tuple):
        model(*map(tensor, batch))
    else:
        model(tensor(batch))


@contextlib.contextmanager
def _probing(model: nn.Module, hooks: _Hooks):
    """Evaluation mode without gradients while the hooks are on; hooks and mode undone after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        hooks.remove()
        model.train(was_training)


def layer_layout(model: nn.Module, layers: list[str], probe: Any,
                 select: dict[str, int | str] | None = None) -> list[LayerSpec]:
    """Shape and producing parameters of each layer, from one probe forward pass."""
    hooks = _Hooks(model, layers, select or {}, trace_parameters=True)
    modules = dict(model.named_modules())
    with _probing(model, hooks):
        try:
            _forward(model, probe)
        except KnownFailure:
            raise
        except (RuntimeError, TypeError, ValueError) as err:  # the user's forward: say which input
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise RecordError(f"inputs: the model's forward fails on the probe inputs ({type(err).__name__}: "
                              f"{first}); pass them as the training loop does, e.g. "
                              "torch.as_tensor(x, dtype=torch.float32) for a float64 numpy array") from err
    missing = [name for name in layers if name not in hooks.outputs]
    if missing:
        raise RecordError(f"modules {missing} did not run in the forward pass; record modules the "
                          "model's forward calls")
    owned: dict[str, list[str]] = {}
    pending: list[str] = []
    taken: set[str] = set()
    for kind, name in hooks.events:
        if kind == "parameters":
            pending += [f"{name}.{p}" for p, _ in modules[name].named_parameters(recurse=False)]
        else:
            owned[name] = [p for p in dict.fromkeys(pending) if p not in taken]
            taken.update(owned[name])
            pending = []
    return [LayerSpec(name, name, tuple(hooks.outputs[name].shape[1:]), tuple(owned[name]))
            for name in layers]


def _batches(inputs: Any, size: int) -> Iterable[Any]:
    for start in range(0, len(input_parts(inputs)[0]), size):
        yield _rows(inputs, slice(start, start + size))


def probe_pass(model: nn.Module, inputs: Any, layers: list[str], select: dict[str, int | str] | None,
               batch_size: int, take: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Run `inputs` through `model` in evaluation mode, batch by batch, handing `take` each
    batch's layer outputs as float32 numpy arrays. The model's mode is restored afterwards."""
    hooks = _Hooks(model, layers, select or {})
    with _probing(model, hooks):
        for batch in _batches(inputs, batch_size):
            hooks.outputs.clear()  # one output per module and batch
            _forward(model, batch)
            take({name: hooks.outputs[name].numpy() for name in layers})


def capture(model: nn.Module, inputs: Any, layers: list[str], select: dict[str, int | str] | None = None,
            batch_size: int = PROBE_BATCH) -> dict[str, np.ndarray]:
    """Every layer's output for `inputs` in evaluation mode, as float32 numpy arrays.

    The model's training mode is restored afterwards; nothing else about it changes.
    """
    parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}

    def take(outputs: dict[str, np.ndarray]) -> None:
        for name in layers:
            parts[name].append(outputs[name])
    probe_pass(model, inputs, layers, select, batch_size, take)
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


class GradientStats:
    """Per recorded layer: ||E_batch g||_2 and sqrt(tr Cov_batch g) over the batches seen."""

    def __init__(self, model: nn.Module, layer_parameters: dict[str, list[str]]):
        named = dict(model.named_parameters())
        self.groups = {layer: [named[p] for p in params if p in named]
                       for layer, params in layer_parameters.items()}
        self.reset()

    def reset(self) -> None:
        self.sum = {k: [torch.zeros_like(p) for p in ps] for k, ps in self.groups.items()}
        self.sum_sq = {k: [torch.zeros_like(p) for p in ps] for k, ps in self.groups.items()}
        self.n_batches = 0

    def update(self) -> None:
        self.n_batches += 1
        for layer, params in self.groups.items():
            for p, s, s2 in zip(params, self.sum[layer], self.sum_sq[layer], strict=True):
                if p.grad is not None:
                    s += p.grad
                    s2 += p.grad * p.grad

    def result(self, layers: list[str]) -> tuple[np.ndarray, np.ndarray]:
        mean, std = np.full(len(layers), np.nan), np.full(len(layers), np.nan)
        if self.n_batches == 0:
            return mean, std
        for i, layer in enumerate(layers):
            if not self.groups.get(layer):
                continue
            # Reduce in numpy float64: torch's threaded sums would vary with the thread count.
            s = np.concatenate([t.detach().cpu().double().numpy().ravel() for t in self.sum[layer]])
            s2 = np.concatenate([t.detach().cpu().double().numpy().ravel()
                                 for t in self.sum_sq[layer]])
            m = s / self.n_batches
            mean[i] = math.sqrt(float(np.dot(m, m)))
            std[i] = math.sqrt(float(np.clip(s2 / self.n_batches - m * m, 0, None).sum()))
        return mean, std


def check_probe_inputs(inputs: Any) -> None:
    """One line for probe inputs the Recorder cannot pass through the model as they are: not a
    tensor or array (a list, a DataLoader), parts of unequal length, or NaN/inf values."""
    parts = input_parts(inputs)
    if not parts:
        raise RecordError("inputs: the tuple or dict is empty; pass the probe samples")
    for part in parts:
        if not isinstance(part, torch.Tensor | np.ndarray):
            raise RecordError(f"inputs: pass the probe samples as one tensor or array (a tuple of them "
                              "for a forward of several arguments, a dict for keyword arguments), got "
                              f"{type(part).__name__}; e.g. torch.cat([x for x, _ in loader])")
        values = as_numpy(part)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise RecordError(f"inputs: {int((~np.isfinite(values)).sum())} values are NaN or infinite; "
                              "the probe inputs must be finite")
    if len({len(part) for part in parts}) > 1:
        raise RecordError(f"inputs: the parts hold {[len(part) for part in parts]} samples; "
                          "each needs one row per probe sample")


def recording_spec(model: nn.Module | None, layers: list[str] | dict[str, tuple[int, ...]], inputs: Any,
                   labels: Any, splits: dict[str, Any] | None, name: str, *,
                   select: dict[str, int | str] | None = None,
                   output_layer: str | None = None, epochs: Sequence[int] = (), n_epochs: int = 0,
                   weights: bool = False, gradients: bool = False, activation_dtype: str = "float32",
                   dataset_index: Any = None, model_spec: dict[str, Any] | None = None,
                   extra: dict[str, Any] | None = None) -> ArchiveSpec:
    """The archive root of a recording (see Recorder for the arguments), from one probe pass;
    without a model, `layers` maps each layer to its per-sample shape."""
    check_probe_inputs(inputs)
    if model is None:
        layout = [LayerSpec(name, name, shape, ()) for name, shape in layers.items()]
    else:
        layout = layer_layout(model, layers, next(iter(_batches(inputs, 2))), select)
    stored = as_numpy(input_parts(inputs)[0])
    n = len(stored)
    labels = None if labels is None else class_codes(as_numpy(labels), n)
    codes, split_names = split_codes(n, splits)
    index = np.arange(n) if dataset_index is None else as_numpy(dataset_index).astype(np.int64)
    if index.shape != (n,):
        raise RecordError(f"dataset_index: expected shape ({n},), each input's index in its dataset, got "
                          f"{index.shape}")
    return ArchiveSpec(
        name=name, inputs=stored, labels=labels, split=codes, split_names=split_names,
        dataset_index=index, layers=tuple(layout), output_layer=output_layer or layout[-1].name,
        parameters={} if model is None else {k: tuple(v.shape) for k, v in state_arrays(model).items()},
        epochs=np.asarray(epochs, dtype=np.int64), n_epochs=n_epochs, weights=weights,
        gradients=gradients, activation_dtype=activation_dtype, model=model_spec, extra=extra or {})


class Recorder:
    """Writes one seed's snapshots of `model` into the archive at `path` (see the module docstring).

    Parameters
    ----------
    path : the archive's path; created on first use, reopened (and checked) on resume. One
        called `archive.zarr` owns its folder (checkpoints in `checkpoints/`); `<name>.zarr` may
        share it (checkpoints in `<name>.checkpoints/`; pipeline.runs).
    model : the network; it is only read (probe passes in eval mode, mode restored). A
        `torch.compile`d or (Distributed)DataParallel model is recorded through the module
        it wraps, under that module's names. None: no torch model; each snapshot then passes
        its layers' activations as arrays (`snapshot(epoch, activations={...})`), computed
        by any framework or loaded from disk.
    layers : module names or globs; `select` picks an element of tuple or dict outputs. Without
        a model, `{name: shape}`: each layer's shape for one sample (an int for a vector).
    inputs, labels : the probe samples (tensor, array, a tuple of them for several forward
        arguments or a dict for keyword arguments; the first part is archived as X) and their
        integer labels (None: no I(T;Y) can be estimated).
    splits : `{name: indices}` partitioning the samples; None: one split, "all".
    seed, name : the seed this run records; the run's name in the figures (None: the archive's
        folder for `archive.zarr`, else the archive's name without `.zarr`).
    epochs, n_epochs : the planned snapshot epochs and training length, when known (arrays are
        then allocated once; otherwise they grow).
    nonfinite : "stop" raises NonFiniteActivations at a snapshot whose layers hold NaN or inf
        (or values float16 cannot hold); "warn" stores it with one warning.
    weights, gradients : record the parameters at each snapshot (Fisher information) and, via
        `gradient_step()` after each `backward()`, the gradients' mean and spread.
    optimizer, generators : with an optimizer, each commit stores a checkpoint that `resume()`
        restores (model, optimizer, torch RNG, and these `torch.Generator`s).
    model_spec : how the Fisher estimator rebuilds the model: `{"factory": "pkg.module:fn",
        "config": {...}}` (pipeline.models' factory signature); None: Fisher is skipped.
    """

    def __init__(self, path: str | Path, model: nn.Module | None, layers: Sequence[str] | dict[str, Any],
                 inputs: Any,
                 labels: Any = None, splits: dict[str, Any] | None = None, seed: int = 0,
                 name: str | None = None, *, output_layer: str | None = None,
                 select: dict[str, int | str] | None = None, epochs: Sequence[int] = (),
                 n_epochs: int = 0, weights: bool = False, gradients: bool = False,
                 optimizer: torch.optim.Optimizer | None = None,
                 generators: Sequence[torch.Generator] = (), activation_dtype: str = "float32",
                 dataset_index: Any = None, model_spec: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, batch_size: int = PROBE_BATCH,
                 nonfinite: str = "stop"):
        self.paths = RunPaths.from_archive(path)
        if model is None:
            check_without_model(weights=weights, gradients=gradients, optimizer=optimizer,
                                generators=generators, model_spec=model_spec, select=select)
            layers = layer_shapes(layers)  # {name: shape}: what recording_spec takes without a model
            self.layers, inputs = list(layers), array_inputs(inputs)
        else:
            model = unwrapped(model)
            self.layers = layers = match_layers(model, layers)
        self.model, self.seed, self.select = model, seed_number(seed), dict(select or {})
        self.optimizer, self.generators, self.batch_size = optimizer, list(generators), batch_size
        self.inputs = inputs
        check_options(self.layers, output_layer=output_layer, activation_dtype=activation_dtype,
                      nonfinite=nonfinite, select=self.select, batch_size=batch_size, name=name,
                      extra=extra, model_spec=model_spec)
        self.float16 = activation_dtype == "float16"
        self.nonfinite, self._warned = nonfinite, False
        self.spec = recording_spec(
            model, layers, inputs, labels, splits, name or self.paths.name, select=self.select,
            output_layer=output_layer, epochs=epochs, n_epochs=n_epochs, weights=weights,
            gradients=gradients, activation_dtype=activation_dtype, dataset_index=dataset_index,
            model_spec=model_spec, extra=extra or {})
        if model is not None and model_spec is not None:  # the Fisher traces' network, checked now
            output = next(x for x in self.spec.layers if x.name == self.spec.output_layer)
            check_model_spec_builds(model_spec, self.spec.parameters, tuple(self.spec.inputs.shape[1:]),
                                    output.shape[0])
        self._archive_identity = self._open_archive()
        layer_parameters = {x.name: list(x.parameters) for x in self.spec.layers}
        self.gradients = GradientStats(model, layer_parameters) if gradients else None
        self._lock = lock_seed(self.paths.seed_checkpoints(self.seed), "trainer", wait=False)
        self._writer: WriterProcess | None = None
        # A killed script's writer may still be finishing a commit: read the state after it.
        os.close(lock_seed(self.paths.seed_checkpoints(self.seed), "writer", wait=True))
        seed_writer = SeedWriter(self.paths.archive, self.seed)
        self.status, self._seed_writer = seed_writer.status, seed_writer
        self._epochs = seed_writer.committed_epochs[:seed_writer.committed]
        self._warned_finished = False
        self._history: dict[int, dict[str, float]] = {}
        self._history_through = seed_writer.history_through
        activations = seed_writer.group["activations"]
        self._chunk_rows = {layer: activations[layer].chunks[1] for layer in self.layers}
        self._closed = False

    # -- set-up -----------------------------------------------------------------------------
    def _open_archive(self) -> str:
        """Create the archive, or check that the existing one records the same thing; returns its
        identity, which each checkpoint carries. One process at a time: seeds started together
        (a job array) would each build the archive aside and rename it over another's."""
        lock = lock_file(self.paths.checkpoints, "archive", wait=True, busy="")
        try:
            return self._create_or_check_archive()
        finally:
            os.close(lock)

    def _create_or_check_archive(self) -> str:
        path = self.paths.archive
        if path.is_dir() and not (path / "zarr.json").exists() and not any(path.iterdir()):
            path.rmdir()  # an empty folder made for the archive
        elif path.exists() and not (path / "zarr.json").exists():
            raise RecordError(f"{path} exists and is not an archive: record into a new path, e.g. "
                              f"{path / 'archive.zarr'} (its files are left as they are)")
        if not path.exists():
            create_archive(path, self.spec, provenance())
            return ArchiveReader(path).identity
        reader = ArchiveReader(path)
        existing = reader.attrs
        if "recording_hash" not in existing:
            raise ArchiveError(f"{path} has archive schema {existing['schema_version']}, which this "
                               "release reads but does not extend: retrain with --force, or record "
                               "into another path")
        if existing.get("recording_hash") != self.spec.recording_hash():
            raise ArchiveError(f"{path} was recorded with other inputs, layers or parameters: "
                               "delete it to record afresh, or record into another path")
        prepare_for_writing(path)
        return reader.identity

    # -- the loop's calls ---------------------------------------------------------------------
    @property
    def committed_epochs(self) -> list[int]:
        return list(self._epochs)

    recording = True

    @property
    def finished(self) -> bool:
        return self.status in ("finished", "diverged")

    def resume(self) -> int:
        """Restore the last checkpoint (with an optimizer); returns its epoch, -1 if none.

        A finished seed restores nothing (its checkpoints were removed when it closed) and
        returns its last epoch: a script rerun as it is trains and records nothing."""
        if not self._epochs:
            return -1
        if self.optimizer is None or self.finished:
            return self._epochs[-1]
        ckpt = self._last_checkpoint()
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        for generator, state in zip(self.generators, ckpt["generators"], strict=True):
            generator.set_state(state)
        if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(ckpt["cuda_rng"])
        return int(ckpt["epoch"])

    def _last_checkpoint(self) -> dict[str, Any]:
        """The checkpoint of the last committed snapshot, refused where it is gone or where another
        recording wrote it."""
        path = self.paths.seed_checkpoints(self.seed) / f"snapshot_{len(self._epochs) - 1}.pt"
        if not path.exists():
            raise RecordError(f"resume: {path} is missing, so seed {self.seed} of {self.paths.archive} "
                              "cannot continue where it stopped; record into a new path (or delete the "
                              "archive) to train this seed afresh")
        ckpt = torch.load(path, weights_only=False)
        if ckpt.get("archive", self._archive_identity) != self._archive_identity:
            raise RecordError(f"resume: {path} was written for another archive than {self.paths.archive}; "
                              "record into a new path (or delete the archive) to train this seed afresh")
        return ckpt

    def gradient_step(self) -> None:
        """Call after each `loss.backward()` to record the gradients' mean and spread."""
        if self.gradients is None:
            raise RecordError("gradient_step: open the Recorder with gradients=True")
        self._check_open("gradient_step")
        self.gradients.update()

    def log(self, epoch: int, **metrics: float) -> None:
        """History of one epoch (loss_train, loss_test, accuracy_train, accuracy_test)."""
        self._check_open("log")
        epoch = epoch_number(epoch)
        if epoch > self._history_through:
            self._history.setdefault(epoch, {}).update(history_metrics(metrics))

    def snapshot(self, epoch: int, activations: dict[str, Any] | None = None, **metrics: float) -> bool:
        """Record every layer on the probe inputs at `epoch`; False if already committed (or
        before the last committed epoch: snapshots are stored in increasing epochs).

        `activations` ({layer: array of shape (n, *layer shape)}, rows in the probe inputs'
        order) is a Recorder without a model's snapshot; with a model, the probe pass makes it."""
        self._check_open("snapshot")
        epoch = epoch_number(epoch)
        if (activations is None) == (self.model is None):
            raise RecordError("snapshot: pass activations={layer: array} when the Recorder has no model "
                              "(model=None), and only then; with a model the probe pass records them")
        if self._not_recorded(epoch):
            return False
        n = len(self.spec.inputs)
        shapes = {layer.name: layer.shape for layer in self.spec.layers}
        arrays = None if activations is None else activation_arrays(activations, shapes, n)
        if metrics:
            self.log(epoch, **metrics)
        index = len(self._epochs)
        self._check_finite(epoch, self._stream_activations(index, arrays))
        weights = ({k: v.detach().float().cpu().numpy().copy() for k, v in state_arrays(self.model).items()}
                   if self.spec.weights else {})
        grads = (None, None)
        if self.gradients is not None:
            grads = self.gradients.result(self.layers)
            self.gradients.reset()
        self._epochs.append(epoch)
        self._submit(Commit(index + 1, -1, 0, {}, snapshot_index=index, weights=weights,
                            grad_mean=grads[0], grad_std=grads[1], checkpoint=self._checkpoint(epoch, index),
                            snapshot_epochs=list(self._epochs)),
                     epoch)
        return True

    def _check_open(self, call: str) -> None:
        """A closed Recorder stores nothing more: say so rather than drop the call's values."""
        if self._closed:
            raise RecordError(f"{call}: the Recorder of seed {self.seed} of {self.paths.archive} is "
                              "closed and stores nothing more; call it before rec.close() (inside "
                              "`with Recorder(...)`), e.g. log the final test accuracy there")

    def _not_recorded(self, epoch: int) -> bool:
        """Whether `snapshot(epoch)` records nothing: an epoch recorded before (a rerun script,
        silent), one before the last recorded, or any epoch of a closed seed (each warned)."""
        if epoch in self._epochs:
            return True
        if self.finished:
            if not self._warned_finished:  # once: a longer rerun would warn at every new epoch
                self._warned_finished = True
                last = self._epochs[-1] if self._epochs else "none"
                warnings.warn(f"snapshot at epoch {epoch} not recorded: seed {self.seed} of "
                              f"{self.paths.archive} is {self.status} (closed after epoch {last}) and is "
                              "never extended; record more epochs as another seed or into another archive",
                              stacklevel=3)
            return True
        if self._epochs and epoch < self._epochs[-1]:
            warnings.warn(f"snapshot at epoch {epoch} not recorded: it comes before the last recorded "
                          f"epoch {self._epochs[-1]}; snapshots are stored in increasing epochs",
                          stacklevel=3)
            return True
        return False

    def _stream_activations(self, index: int, arrays: dict[str, np.ndarray] | None) -> list[str]:
        """The probe pass (or the given `arrays`, a batch of rows at a time), handed to the
        writer a chunk at a time as snapshot `index`'s rows; returns its non-finite problems
        (pipeline.snapshot_stream)."""
        writer = self._open_writer()
        stream = SnapshotStream(index, self._chunk_rows, self.float16, writer.submit)
        if arrays is None:
            probe_pass(self.model, self.inputs, self.layers, self.select, self.batch_size, stream.add)
        else:
            for start in range(0, len(self.spec.inputs), self.batch_size):
                # float32 copies: the caller may change its arrays once snapshot() returns
                stream.add({name: values[start:start + self.batch_size].astype(np.float32)
                            for name, values in arrays.items()})
        return stream.finish()

    def _check_finite(self, epoch: int, problems: list[str]) -> None:
        """Apply the `nonfinite` policy; a stopped snapshot's rows stay uncommitted, unseen."""
        if not problems:
            return
        text = f"epoch {epoch}: " + "; ".join(problems)
        if self.nonfinite == "stop":
            raise NonFiniteActivations(f"{text}; the snapshot is not stored (lower the learning rate, "
                                       "or archive float32; nonfinite='warn' stores it anyway)")
        if not self._warned:
            warnings.warn(f"non-finite activations stored at {text} (warned once)", stacklevel=3)
            self._warned = True

    def flush(self) -> None:
        """Wait until every snapshot taken so far is committed to the archive.

        `snapshot` hands its data to the writer process and returns; readers (`ArchiveReader`,
        `estimate_archive`) see a snapshot once it is committed. Call this before estimating
        the archive while training goes on. History logged after the last snapshot is
        committed with the next one, or by `close`."""
        self._check_open("flush")
        if self._writer is not None:
            self._writer.wait()

    def close(self, status: str = "finished", message: str = "") -> None:
        """Commit the remaining history with the seed's final status, and stop the writer."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.finished:
                last = max([self._history_through, *self._history])
                self._submit(Commit(len(self._epochs), -1, 0, {}, status=status, message=message,
                                    snapshot_epochs=list(self._epochs)), last)
                self.status = status
        finally:
            self._stop()

    def _stop(self) -> None:
        atexit.unregister(self._drain_at_exit)
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            os.close(self._lock)
        if self.status == "finished":  # a finished seed never resumes
            shutil.rmtree(self.paths.seed_checkpoints(self.seed), ignore_errors=True)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:  # leave the seed resumable: nothing after the last commit counts
            self._closed = True
            self._stop()

    # -- plumbing -----------------------------------------------------------------------------
    def _checkpoint(self, epoch: int, index: int) -> bytes:
        if self.optimizer is None:
            return b""
        buffer = io.BytesIO()
        cuda = next((p.device for p in self.model.parameters() if p.device.type == "cuda"), None)
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "generators": [g.get_state() for g in self.generators],
                    "cuda_rng": torch.cuda.get_rng_state(cuda) if cuda is not None else None,
                    "epoch": int(epoch), "snapshot_index": index,
                    "archive": self._archive_identity}, buffer)
        return buffer.getvalue()

    def _submit(self, commit: Commit, through: int) -> None:
        """Attach the history rows up to `through` to `commit` and queue it."""
        first = self._history_through + 1
        rows = {var: np.full(max(through - first + 1, 0), np.nan) for var in HISTORY_VARIABLES}
        for epoch in [e for e in self._history if e <= through]:
            for var, value in self._history.pop(epoch).items():
                rows[var][epoch - first] = value
        used = [var for var in rows if np.isfinite(rows[var]).any() or len(rows[var]) == 0]
        commit.history = {var: rows[var] for var in used} if used else {}
        commit.history_first, commit.history_through = first, max(through, self._history_through)
        self._history_through = commit.history_through
        self._open_writer().submit(commit)

    def _open_writer(self) -> WriterProcess:
        if self._writer is None:  # the session's environment, before any writer runs
            self._seed_writer.add_session(training_environment(_model_device(self.model)))
            self._writer = WriterProcess(self.paths.archive, self.seed,
                                         self.paths.seed_checkpoints(self.seed), self._largest_item())
            # after the writer's start registered multiprocessing's own exit handler, so that this
            # one runs first: that handler waits for the writer, which waits for the end of the queue
            atexit.register(self._drain_at_exit)
        return self._writer

    def _drain_at_exit(self) -> None:
        """At the interpreter's exit, a Recorder never closed: commit what was handed to the
        writer and leave the seed resumable, as an exception inside `with Recorder(...)` does."""
        if not self._closed:
            warnings.warn(f"Recorder of seed {self.seed} of {self.paths.archive} was never closed: its "
                          "snapshots are committed and the seed stays resumable; call rec.close() when "
                          "training ends (or use `with Recorder(...) as rec:`) to mark it finished",
                          stacklevel=1)
            self._closed = True
            self._stop()

    def _largest_item(self) -> int:
        """Bytes of the largest item queued to the writer, which bounds its queue's length: a
        chunk of a layer, or a commit, counted as the parameters' size for its weights (when
        recorded) and again for its checkpoint (with an optimizer)."""
        itemsize = np.dtype(self.spec.activation_dtype).itemsize
        chunks = [rows * itemsize * math.prod(layer.shape)
                  for layer, rows in zip(self.spec.layers, self._chunk_rows.values(), strict=True)]
        parameters = 4 * sum(math.prod(shape) for shape in self.spec.parameters.values())
        return max(*chunks, parameters * (bool(self.spec.weights) + (self.optimizer is not None)))


def unwrapped(model: nn.Module) -> nn.Module:
    """The module a `torch.compile`, `DataParallel` or `DistributedDataParallel` wrapper holds
    (the model itself otherwise). The archive then names layers and parameters as the model does,
    not `_orig_mod.<name>` or `module.<name>`, so a `model_spec` factory's model matches them;
    the probe pass runs it eagerly on its own device, with no collective a single recording rank
    would wait on for ever."""
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _model_device(model: nn.Module | None) -> torch.device | None:
    if model is None:
        return None
    return next((p.device for p in model.parameters()), torch.device("cpu"))
