"""The activation archive: a Zarr v3 store written by training, read by every later stage.

    from pipeline.archive import ArchiveReader
    archive = ArchiveReader("data/runs/szt_tanh/archive.zarr")
    archive.seeds, archive.layers, archive.committed_epochs(0)
    t = archive.activations(seed=0, layer="dense1", epoch=120)   # (n_samples, 10)

Schema (docs/archive.md): arrays are pre-allocated for the whole snapshot schedule, one epoch
per chunk. A snapshot becomes visible only when the seed group's `committed_snapshots`
attribute is raised past it, after all its chunks and its resume checkpoint are on disk. zarr's
LocalStore writes every chunk and metadata document through a temporary file and a rename, so
a kill at any moment leaves either the old or the new version of each file, never a torn one.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.config import ArchiveConfig, ExperimentConfig, config_from_dict
from pipeline.data import SplitData

SCHEMA_VERSION = "1.0"
SPLITS = ("train", "test")
SPLIT_CODES = {"all": (0, 1), "train": (0,), "test": (1,)}  # the `split` array's codes
HISTORY_VARIABLES = ("loss_train", "loss_test", "accuracy_train", "accuracy_test")
CHUNK_BYTES = 64 * 2**20  # split an epoch's activations over samples beyond this size


class ArchiveError(RuntimeError):
    """The archive is missing, of another schema, or corrupted; the message names the fix."""


def snapshot_epochs(cfg: ArchiveConfig, n_epochs: int) -> np.ndarray:
    """Epochs (0 = before training) at which activations and weights are recorded."""
    if cfg.snapshots == "log":
        # Shwartz-Ziv & Tishby: unique(int(logspace(0, log2 E, 400, base=2))) - 1
        points = np.logspace(0, np.log2(n_epochs), cfg.n_log_points, base=2)
        epochs = np.unique(points.astype(np.int64)) - 1
    elif cfg.snapshots == "every":
        epochs = np.unique(np.append(np.arange(0, n_epochs + 1, cfg.every), n_epochs))
    else:
        epochs = np.unique(np.asarray(cfg.epochs, dtype=np.int64))
    return epochs.astype(np.int64)


@dataclass(frozen=True)
class Samples:
    """The fixed inputs whose activations are recorded, from both splits."""

    inputs: np.ndarray
    labels: np.ndarray
    dataset_index: np.ndarray
    split: np.ndarray  # 0 train, 1 test


def choose_samples(data: SplitData, per_split: int, seed: int) -> Samples:
    """`per_split` samples of each split (0: all), train first, in dataset order."""
    rng = np.random.default_rng(seed)
    parts = []
    for code, (x, y, index) in enumerate(
        [(data.x_train, data.y_train, data.index_train), (data.x_test, data.y_test, data.index_test)]
    ):
        keep = np.arange(len(y))
        if 0 < per_split < len(y):
            keep = np.sort(rng.choice(len(y), per_split, replace=False))
        parts.append((x[keep], y[keep], index[keep], np.full(len(keep), code, dtype=np.int8)))
    return Samples(*(np.concatenate([p[i] for p in parts]) for i in range(4)))


def split_indices(split_codes: np.ndarray, split: str) -> np.ndarray:
    """Indices of the recorded samples of `split` ("all", "train" or "test")."""
    return np.flatnonzero(np.isin(split_codes, SPLIT_CODES[split]))


def _unit_dims(layer: str, shape: tuple[int, ...]) -> list[str]:
    if len(shape) == 1:
        return [f"{layer}_unit"]
    if len(shape) == 3:
        return [f"{layer}_channel", f"{layer}_height", f"{layer}_width"]
    return [f"{layer}_dim{i}" for i in range(len(shape))]


def weight_name(param: str) -> str:
    """Archive name of a model parameter: `blocks.dense1.1.weight` -> `dense1.1.weight`."""
    return param.removeprefix("blocks.")


def flatten_weights(weights: dict[str, np.ndarray]) -> np.ndarray:
    """Concatenate parameters (in model order) into the archive's flat `weights` row."""
    return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in weights.values()])


def unflatten_weights(row: np.ndarray, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        out[name] = row[offset:offset + size].reshape(shape)
        offset += size
    return out


def create_archive(
    path: Path,
    cfg: ExperimentConfig,
    samples: Samples,
    layer_shapes: dict[str, tuple[int, ...]],
    param_shapes: dict[str, tuple[int, ...]],
    layer_parameters: dict[str, list[str]],
    provenance: dict[str, Any],
) -> None:
    """Write the root group (samples, coordinates, metadata) atomically: build aside, rename."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    root = zarr.open_group(str(partial), mode="w", zarr_format=3)
    epochs = snapshot_epochs(cfg.archive, cfg.train.n_epochs)
    n = len(samples.labels)

    def put(name: str, values: np.ndarray, dims: list[str], **attrs: Any) -> None:
        arr = root.create_array(name, shape=values.shape, dtype=values.dtype,
                                dimension_names=dims, chunks=values.shape or None)
        arr[...] = values
        arr.attrs.update(attrs)

    put("epoch", epochs, ["epoch"], long_name="snapshot epoch (0 = before training)")
    put("history_epoch", np.arange(cfg.train.n_epochs + 1), ["history_epoch"],
        long_name="epoch of the training history (0 = before training)")
    put("sample", np.arange(n), ["sample"])
    put("layer", np.array(list(layer_shapes), dtype=np.dtypes.StringDType()), ["layer"])
    input_dims = ["sample", *[f"input_dim{i}" for i in range(samples.inputs.ndim - 1)]]
    put("inputs", samples.inputs.astype(np.float32), input_dims, long_name="recorded inputs")
    put("labels", samples.labels.astype(np.int64), ["sample"])
    put("dataset_index", samples.dataset_index.astype(np.int64), ["sample"],
        long_name="index of the sample in the source dataset")
    put("split", samples.split.astype(np.int8), ["sample"], flag_values=[0, 1],
        flag_meanings="train test")
    root.attrs.update({
        "schema_version": SCHEMA_VERSION,
        "config": cfg.to_dict(),
        "training_hash": cfg.training_hash(),
        "layers": [{"name": k, "shape": list(v), "parameters": [weight_name(p) for p in
                    layer_parameters.get(k, [])]} for k, v in layer_shapes.items()],
        "parameters": {weight_name(k): list(v) for k, v in param_shapes.items()},
        "provenance": provenance,
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(path)


def create_seed_group(path: Path, seed: int) -> zarr.Group:
    """Pre-allocate one seed's arrays (idempotent: a half-created group is rebuilt)."""
    root = zarr.open_group(str(path), mode="r+", zarr_format=3)
    name = f"seed_{seed}"
    if name in root and root[name].attrs.get("initialised"):
        return root[name]
    if name in root:
        del root[name]
    layers = root.attrs["layers"]
    params = root.attrs["parameters"]
    store_weights = root.attrs["config"]["archive"]["store_weights"]
    act_dtype = root.attrs["config"]["archive"]["activation_dtype"]
    n_snap = root["epoch"].shape[0]
    n_hist = root["history_epoch"].shape[0]
    n = root["sample"].shape[0]
    group = root.create_group(name)
    acts = group.create_group("activations")
    for layer in layers:
        shape = tuple(layer["shape"])
        row_bytes = int(np.prod(shape)) * np.dtype(act_dtype).itemsize
        rows = max(1, min(n, CHUNK_BYTES // max(row_bytes, 1)))
        acts.create_array(layer["name"], shape=(n_snap, n, *shape), chunks=(1, rows, *shape),
                          dtype=act_dtype, fill_value=np.nan,
                          dimension_names=["epoch", "sample", *_unit_dims(layer["name"], shape)])
    for stat in ("grad_mean", "grad_std"):
        arr = group.create_array(stat, shape=(n_snap, len(layers)), chunks=(1, len(layers)),
                                 dtype="float64", fill_value=np.nan,
                                 dimension_names=["epoch", "layer"])
        arr.attrs["long_name"] = {
            "grad_mean": "||mean over the epoch's mini-batches of the layer's gradient||_2",
            "grad_std": "sqrt(trace of the covariance of the layer's mini-batch gradients)",
        }[stat]
    for var in HISTORY_VARIABLES:
        group.create_array(var, shape=(n_hist,), chunks=(min(n_hist, 4096),), dtype="float64",
                           fill_value=np.nan, dimension_names=["history_epoch"])
    if store_weights:
        n_params = sum(int(np.prod(shape)) for shape in params.values())
        per_chunk = max(1, CHUNK_BYTES // 4)
        arr = group.create_array("weights", shape=(n_snap, n_params),
                                 chunks=(1, min(n_params, per_chunk)), dtype="float32",
                                 fill_value=np.nan, dimension_names=["epoch", "parameter"])
        arr.attrs["long_name"] = ("all model parameters and float buffers (BatchNorm statistics), "
                                  "flattened in the order of the root attribute `parameters`")
    group.attrs.update({"seed": seed, "committed_snapshots": 0, "history_through": -1,
                        "status": "training", "message": "", "initialised": True})
    return group


class SeedWriter:
    """Writes one seed's snapshots; only the training process of that seed uses it."""

    def __init__(self, path: Path, seed: int):
        self.group = create_seed_group(path, seed)

    @property
    def committed(self) -> int:
        return int(self.group.attrs["committed_snapshots"])

    @property
    def history_through(self) -> int:
        return int(self.group.attrs["history_through"])

    @property
    def status(self) -> str:
        return str(self.group.attrs["status"])

    def write_snapshot(self, index: int, activations: dict[str, np.ndarray],
                       weights: dict[str, np.ndarray], grad_mean: np.ndarray,
                       grad_std: np.ndarray) -> None:
        for layer, values in activations.items():
            self.group["activations"][layer][index] = values
        if "weights" in self.group and weights:
            self.group["weights"][index] = flatten_weights(weights)
        self.group["grad_mean"][index] = grad_mean
        self.group["grad_std"][index] = grad_std

    def write_history(self, first_epoch: int, rows: dict[str, np.ndarray]) -> None:
        for var, values in rows.items():
            if len(values):
                self.group[var][first_epoch:first_epoch + len(values)] = values

    def commit(self, committed_snapshots: int, history_through: int, status: str = "training",
               message: str = "") -> None:
        """The commit point: one atomic rewrite of the seed group's metadata document."""
        self.group.attrs.update({"committed_snapshots": committed_snapshots,
                                 "history_through": history_through, "status": status,
                                 "message": message})


class ArchiveReader:
    """Read-only view of an archive, limited to committed snapshots.

    Parameters
    ----------
    path : str or Path
        Path (or fsspec URL) of `archive.zarr`.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        try:
            self.root = zarr.open_group(self.path, mode="r", zarr_format=3,
                                        use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError) as err:
            raise ArchiveError(
                f"no archive at {self.path}: run `make train CONFIG=...` first ({err})"
            ) from None
        attrs = self.root.attrs.asdict()
        version = attrs.get("schema_version")
        if version is None:
            raise ArchiveError(f"{self.path} is not an infoplane archive (no schema_version)")
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ArchiveError(
                f"{self.path} has archive schema {version}; this infoplane reads "
                f"{SCHEMA_VERSION}: retrain with `make train --force` or use a matching release"
            )
        self.attrs = attrs
        self.config: ExperimentConfig = config_from_dict(attrs["config"])
        self.layers: list[str] = [layer["name"] for layer in attrs["layers"]]
        self.layer_shapes = {layer["name"]: tuple(layer["shape"]) for layer in attrs["layers"]}
        self.snapshot_epochs: np.ndarray = self._read("epoch")
        self.labels: np.ndarray = self._read("labels")
        self.split: np.ndarray = self._read("split")

    def _array(self, name: str, group: zarr.Group | None = None) -> zarr.Array:
        group = self.root if group is None else group
        try:
            return group[name]
        except KeyError:
            raise ArchiveError(f"{self.path}: array {group.path}/{name} is missing; the archive "
                               "is incomplete or corrupted: retrain with --force") from None

    def _index(self, array: zarr.Array, index: Any = ...) -> np.ndarray:
        try:
            return np.asarray(array[index])
        except Exception as err:  # a torn or foreign chunk file
            raise ArchiveError(f"{self.path}: array {array.path} cannot be read ({err}); "
                               "the archive is corrupted: retrain with --force") from None

    def _read(self, name: str, group: zarr.Group | None = None, index: Any = ...) -> np.ndarray:
        return self._index(self._array(name, group), index)

    @property
    def inputs(self) -> np.ndarray:
        return self._read("inputs")

    @property
    def seeds(self) -> list[int]:
        names = [k for k, _ in self.root.groups() if k.startswith("seed_")]
        seeds = [int(k.removeprefix("seed_")) for k in names]
        return sorted(s for s in seeds if self.root[f"seed_{s}"].attrs.get("initialised"))

    def seed_group(self, seed: int) -> zarr.Group:
        try:
            return self.root[f"seed_{seed}"]
        except KeyError:
            raise ArchiveError(f"{self.path}: seed {seed} not in archive (has {self.seeds})") from None

    def seed_status(self, seed: int) -> dict[str, Any]:
        return dict(self.seed_group(seed).attrs)

    def committed_epochs(self, seed: int) -> np.ndarray:
        """Snapshot epochs of `seed` whose data are completely written."""
        n = int(self.seed_group(seed).attrs["committed_snapshots"])
        return self.snapshot_epochs[:n]

    def epoch_index(self, seed: int, epoch: int) -> int:
        return self._committed_index(self.committed_epochs(seed), seed, epoch)

    def _committed_index(self, committed: np.ndarray, seed: int, epoch: int) -> int:
        hits = np.flatnonzero(committed == epoch)
        if not len(hits):
            raise ArchiveError(f"{self.path}: epoch {epoch} of seed {seed} is not committed "
                               f"(committed: {len(committed)} snapshots)")
        return int(hits[0])

    def activations(self, seed: int, layer: str, epoch: int) -> np.ndarray:
        """One layer's recorded outputs at a committed epoch: (n_samples, *layer_shape)."""
        return self.layer_reader(seed, layer)(epoch)

    def layer_reader(self, seed: int, layer: str) -> Callable[[int], np.ndarray]:
        """`epoch -> activations` for one seed and layer, with the array opened and the committed
        epochs read once (one metadata round trip per task instead of one per cell)."""
        if layer not in self.layer_shapes:
            raise ArchiveError(f"{self.path}: no layer {layer!r}; layers are {self.layers}")
        array = self._array(layer, self.seed_group(seed)["activations"])
        committed = self.committed_epochs(seed)

        def read(epoch: int) -> np.ndarray:
            return self._index(array, self._committed_index(committed, seed, epoch))
        return read

    def weights(self, seed: int, epoch: int) -> dict[str, np.ndarray]:
        group = self.seed_group(seed)
        if "weights" not in group:
            raise ArchiveError(f"{self.path}: weights were not stored (archive.store_weights)")
        row = self._read("weights", group, self.epoch_index(seed, epoch))
        return unflatten_weights(row, self.attrs["parameters"])

    def gradient_stats(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.committed_epochs(seed))
        group = self.seed_group(seed)
        return self._read("grad_mean", group)[:n], self._read("grad_std", group)[:n]

    def history(self, seed: int) -> dict[str, np.ndarray]:
        group = self.seed_group(seed)
        through = int(group.attrs["history_through"])
        return {var: self._read(var, group)[: through + 1] for var in HISTORY_VARIABLES}

    def describe(self) -> str:
        lines = [f"archive {self.path} (schema {self.attrs['schema_version']})",
                 f"  layers: {', '.join(f'{k}{list(v)}' for k, v in self.layer_shapes.items())}"]
        for seed in self.seeds:
            a = self.seed_status(seed)
            lines.append(f"  seed {seed}: {a['committed_snapshots']}/{len(self.snapshot_epochs)}"
                         f" snapshots, status {a['status']} {a['message']}".rstrip())
        return "\n".join(lines)


def consolidate(path: Path) -> None:
    """Consolidate metadata once training has stopped, so xarray opens the store quickly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is not yet in the v3 spec
        zarr.consolidate_metadata(str(path))
