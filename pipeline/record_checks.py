"""What the Recorder accepts: one RecordError line for each argument it cannot use as given.

Each check refuses a value that would otherwise be stored as something else (fractional labels
cast to codes, a mask read as positions) or fail later, at a snapshot, a commit or in the
estimate stage, far from the call that caused it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from pipeline.archive import HISTORY_VARIABLES
from pipeline.arrays import as_numpy
from pipeline.config import ConfigError, check_name
from pipeline.errors import KnownFailure
from pipeline.models import MODELS

METRIC_ALIASES = {"loss": "loss_train", "accuracy": "accuracy_train"}


class RecordError(KnownFailure, ValueError):
    """A layer pattern, a module output or a recorder argument cannot be used; says which."""


class NonFiniteActivations(RecordError):
    """A snapshot's layer holds NaN or inf (or values beyond float16's range when archived in
    float16): storing it would give every estimator garbage."""


def fractions(values: np.ndarray) -> np.ndarray:
    """Where float `values` are not whole numbers (a cast to int would change them)."""
    return (values != np.round(values)) if values.dtype.kind == "f" else np.zeros(values.shape, bool)


def sample_indices(what: str, index: np.ndarray, n: int) -> np.ndarray:
    """Positions 0..n-1 of the probe samples from indices or a boolean mask of length n; refused
    where they would select other samples than meant (fractions, negatives, beyond n)."""
    if index.dtype.kind == "b":
        if index.shape != (n,):
            raise RecordError(f"{what}: a boolean mask must have one entry per input ({n}), got "
                              f"{index.shape}")
        return np.flatnonzero(index)
    index = index.reshape(-1)
    if fractions(index).any() or index.dtype.kind not in "iuf":
        raise RecordError(f"{what}: pass integer positions 0..{n - 1} or a boolean mask, got {index.dtype}"
                          + (" with fractions" if index.dtype.kind == "f" else ""))
    index = index.astype(np.int64)
    if index.size and (index.min() < 0 or index.max() >= n):
        raise RecordError(f"{what}: positions must lie in 0..{n - 1} (one per probe input), got "
                          f"{index.min()}..{index.max()}")
    return index


def checked_name(key: str, name: Any) -> None:
    """`config.check_name`'s rule for a run or split name given to the Recorder, as a RecordError."""
    try:
        check_name(key, str(name))
    except ConfigError as err:
        raise RecordError(str(err)) from None


def split_codes(n: int, splits: dict[str, Any] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """One code per sample from `{name: indices}`; the splits must partition the samples."""
    if not splits:
        return np.zeros(n, dtype=np.int8), ("all",)
    if "all" in splits:
        raise RecordError("splits: 'all' is reserved (it means every recorded sample)")
    for name in splits:  # split names end up in the figures' file names
        checked_name("splits", name)
    codes = np.full(n, -1, dtype=np.int8)
    for code, (name, index) in enumerate(splits.items()):
        index = sample_indices(f"splits[{name!r}]", as_numpy(index), n)
        if (codes[index] >= 0).any():
            raise RecordError(f"splits: samples of {name!r} are also in another split")
        codes[index] = code
    if (codes < 0).any():
        raise RecordError(f"splits: {int((codes < 0).sum())} samples are in no split; every "
                          "recorded sample must be in exactly one")
    return codes, tuple(splits)


def history_metrics(values: dict[str, float]) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        name = METRIC_ALIASES.get(key, key)
        if name not in HISTORY_VARIABLES:
            raise RecordError(f"unknown metric {key!r}; record one of {list(HISTORY_VARIABLES)} "
                              f"(or the aliases {list(METRIC_ALIASES)})")
        out[name] = float(value)
    return out


def class_codes(labels: np.ndarray, n: int) -> np.ndarray:
    """The labels as int64 class codes 0..K-1, one per input; refused where a cast would record
    something else (fractions, NaN) or where the estimators could not count them (negatives)."""
    if labels.shape != (n,):
        raise RecordError(f"labels: expected shape ({n},), one per input, got {labels.shape}; pass "
                          "class codes, not one-hot rows or probabilities")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise RecordError(f"labels: {int((~np.isfinite(labels)).sum())} are NaN or infinite; "
                              "pass one class code per input")
        fractional = fractions(labels)
        if fractional.any():
            raise RecordError(f"labels: {int(fractional.sum())} are not whole numbers (e.g. "
                              f"{labels[fractional][0]}); pass class codes, not probabilities (a "
                              "continuous target is not a label: record without labels and read I(T;Y) "
                              "with mutual_information(t, target, 'ksg'), docs/extending.md)")
    elif labels.dtype.kind not in "biu":
        raise RecordError(f"labels: dtype {labels.dtype}; pass integer class codes 0..K-1")
    codes = labels.astype(np.int64)
    if (codes < 0).any():
        raise RecordError(f"labels: {int((codes < 0).sum())} are negative (smallest {codes.min()}); pass "
                          "class codes 0..K-1, e.g. np.unique(labels, return_inverse=True)[1]")
    return codes


def whole_number(value: Any) -> int | None:
    """`value` as an int where it is a whole number >= 0 (2.0 is 2), else None (a bool or a
    string too: either means a mistake in the calling script)."""
    if isinstance(value, bool | str | bytes):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() and number >= 0 else None


def epoch_number(epoch: Any) -> int:
    """A snapshot's or history row's epoch as an int; refused unless a whole number >= 0 (the
    history holds one row per epoch: number sub-epoch snapshots by steps instead)."""
    if (number := whole_number(epoch)) is None:
        raise RecordError(f"epoch {epoch!r}: epochs are whole numbers counted from 0 (one history row "
                          "each); number snapshots taken within an epoch by steps instead")
    return number


def seed_number(seed: Any) -> int:
    """The seed an archive group is named by (seed_<n>); refused unless a whole number >= 0."""
    if (number := whole_number(seed)) is None:
        raise RecordError(f"seed {seed!r}: seeds are whole numbers >= 0 (the archive stores each as "
                          "group seed_<n>)")
    return number


def check_options(layers: list[str], *, output_layer: str | None, activation_dtype: str, nonfinite: str,
                  select: dict[str, Any], batch_size: Any, name: str | None, extra: dict[str, Any] | None,
                  model_spec: dict[str, Any] | None) -> None:
    """One RecordError line for a Recorder option it would otherwise trip on later (at a
    snapshot, at the archive's commit, in the estimate stage) or store without effect."""
    if output_layer is not None and output_layer not in layers:
        raise RecordError(f"output_layer {output_layer!r} is not among the recorded layers {layers}")
    if activation_dtype not in ("float32", "float16"):
        raise RecordError(f"activation_dtype: 'float32' or 'float16', got {activation_dtype!r}")
    if nonfinite not in ("stop", "warn"):
        raise RecordError(f"nonfinite: 'stop' or 'warn', got {nonfinite!r}")
    if unknown := sorted(set(select) - set(layers)):
        raise RecordError(f"select: {unknown} are not among the recorded layers {layers}")
    if whole_number(batch_size) in (None, 0):
        raise RecordError(f"batch_size: the probe samples per forward pass, a whole number >= 1, got "
                          f"{batch_size!r}")
    if name is not None:  # the run's name, checked as a config's is
        checked_name("name", name)
    try:
        json.dumps(extra or {})
    except TypeError as err:
        raise RecordError(f"extra: values must be JSON (numbers, strings, lists, dicts): {err}") from None
    if model_spec is not None:
        try:
            MODELS.get(str(model_spec.get("factory", "")))
        except KnownFailure as err:
            raise RecordError(f"model_spec: {err}") from None


MAX_NAME_BYTES = 200  # a layer's folder name, and its figures' file names, under the usual 255


def check_model_spec_builds(model_spec: dict[str, Any], parameters: dict[str, tuple[int, ...]],
                            input_shape: tuple[int, ...], n_classes: int) -> None:
    """RecordError unless `model_spec` builds a network with the recorded model's parameters
    (names and shapes): the Fisher traces load each snapshot's weights into it."""
    from pipeline.fisher import spec_mismatch

    if problem := spec_mismatch(model_spec, input_shape, n_classes, parameters):
        raise RecordError(f"model_spec: the {problem}; give it the settings (`config`) that build this "
                          "model, or leave model_spec out (no Fisher information)")


def layer_name_problem(name: Any) -> str | None:
    """Why `name` cannot name a layer's array in the archive, or None: it must be a zarr node name
    (no '/', not '.' or '..', no leading '__'), not the metadata file, and fit a file name."""
    if not isinstance(name, str) or not name.strip():
        return "is not a name: use a non-empty string"
    if "/" in name:
        return "holds '/', which would nest folders"
    if name in (".", "..", "zarr.json") or name.startswith("__"):
        return "is reserved by zarr ('.', '..', 'zarr.json' and names starting with '__')"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"is {len(name.encode())} bytes long, more than the {MAX_NAME_BYTES} a file name can take here"
    return None


def layer_shapes(layers: Any) -> dict[str, tuple[int, ...]]:
    """The layers of a recording without a model: `{name: per-sample shape}` (an int for a
    vector), checked as the archive will store them."""
    if not isinstance(layers, dict) or not layers:
        raise RecordError("layers: without a model, name each layer with the shape of one sample's "
                          "activations, e.g. layers={'h1': 64, 'conv1': (8, 14, 14)}")
    shapes = {}
    for name, shape in layers.items():
        if problem := layer_name_problem(name):
            raise RecordError(f"layers: {name!r} {problem}; each layer is a folder of the archive: "
                              "rename it")
        dims = (shape,) if whole_number(shape) is not None else shape
        if not isinstance(dims, tuple | list) or not dims or any(whole_number(d) in (None, 0) for d in dims):
            raise RecordError(f"layers[{name!r}]: {shape!r} is not a shape; give one sample's shape as "
                              "a whole number >= 1 or a tuple of them, e.g. 64 or (8, 14, 14)")
        shapes[name] = tuple(int(d) for d in dims)
    return shapes


def check_without_model(**options: Any) -> None:
    """Refuse the options that read a torch model when there is none (weights, gradients,
    resume checkpoints, output selection): each would record nothing."""
    if used := [name for name, value in options.items() if value]:
        raise RecordError(f"{', '.join(used)}: need a torch model, and this Recorder has none (model=None); "
                          "without a model, activations and history are recorded, not weights, gradients "
                          "or checkpoints")


def activation_arrays(activations: Any, shapes: dict[str, tuple[int, ...]], n: int) -> dict[str, np.ndarray]:
    """One snapshot's layers handed to a Recorder without a model, as numpy arrays: every
    layer, each (n, *its shape), numbers only; checked whole before anything is written."""
    if not isinstance(activations, dict):
        raise RecordError(f"activations: pass a dict {{layer: array}}, got {type(activations).__name__}")
    missing, extra = [k for k in shapes if k not in activations], [k for k in activations if k not in shapes]
    if missing or extra:
        raise RecordError(f"activations: the layers are {list(shapes)}" + (f"; missing {missing}" if missing
                          else "") + (f"; unknown {extra}" if extra else ""))
    arrays = {}
    for name, shape in shapes.items():
        values = as_numpy(activations[name])
        if values.shape != (n, *shape):
            raise RecordError(f"activations[{name!r}]: expected shape {(n, *shape)} (one row per probe "
                              f"input, then the layer's shape), got {values.shape}")
        if values.dtype.kind not in "biuf":
            raise RecordError(f"activations[{name!r}]: dtype {values.dtype}; pass numbers")
        arrays[name] = values
    return arrays


def array_inputs(inputs: Any) -> Any:
    """The probe inputs of a recording without a model, which only archives them: an array of
    another framework (JAX, TensorFlow: anything `np.asarray` reads as numbers) becomes numpy;
    tensors, arrays, tuples and dicts are checked as a model's inputs are."""
    if isinstance(inputs, np.ndarray | torch.Tensor | tuple | dict):
        return inputs
    try:
        values = np.asarray(inputs)
    except ValueError as err:  # ragged rows
        raise RecordError(f"inputs: {err}; pass the probe samples as one array") from None
    if values.ndim == 0 or values.dtype.kind not in "biuf":
        raise RecordError(f"inputs: {type(inputs).__name__} is not an array of numbers; pass the probe "
                          "samples as one array (n, ...)")
    return values
