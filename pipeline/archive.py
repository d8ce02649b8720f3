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

import hashlib
import json
import shutil
import uuid
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from tqdm import tqdm

from pipeline.config import ArchiveConfig
from pipeline.data import SplitData
from pipeline.errors import KnownFailure
from pipeline.runs import is_results_store

SCHEMA_VERSION = "1.2"  # 1.1: self-describing root (layers, output layer, splits, parts, model);
# 1.2: each seed records its training sessions (torch version, threads, device)
SPLITS = ("train", "test")  # the built-in runs' split names, codes 0 and 1
HISTORY_VARIABLES = ("loss_train", "loss_test", "accuracy_train", "accuracy_test")
CHUNK_BYTES = 64 * 2**20  # split an epoch's activations over samples beyond this size


class ArchiveError(KnownFailure, RuntimeError):
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


def split_indices(split_codes: np.ndarray, split: str,
                  names: tuple[str, ...] | list[str] = SPLITS) -> np.ndarray:
    """Indices of the recorded samples of `split`: "all", or one of `names` (code = position)."""
    if split == "all":
        return np.arange(len(split_codes))
    if split not in names:
        raise ArchiveError(f"no split {split!r}: the archive has {['all', *names]}")
    return np.flatnonzero(split_codes == list(names).index(split))


def _unit_dims(layer: str, shape: tuple[int, ...]) -> list[str]:
    if len(shape) == 1:
        return [f"{layer}_unit"]
    if len(shape) == 3:
        return [f"{layer}_channel", f"{layer}_height", f"{layer}_width"]
    return [f"{layer}_dim{i}" for i in range(len(shape))]


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


@dataclass(frozen=True)
class LayerSpec:
    """One recorded layer: archive name, the module it hooks, output shape, producing parameters."""

    name: str
    module: str
    shape: tuple[int, ...]
    parameters: tuple[str, ...]


@dataclass(frozen=True)
class ArchiveSpec:
    """Everything an archive's root records; what readers need, without any config code.

    `epochs` and `n_epochs` are the planned snapshot schedule and training length (empty and 0
    when unknown: the arrays then grow as snapshots come). `model` says how to rebuild the network
    for the Fisher estimator (`{"factory": ..., "config": {...}}`), None when it cannot be.
    """

    name: str
    inputs: np.ndarray
    labels: np.ndarray | None
    split: np.ndarray  # code per sample, indexing `split_names`
    split_names: tuple[str, ...]
    dataset_index: np.ndarray
    layers: tuple[LayerSpec, ...]
    output_layer: str
    parameters: dict[str, tuple[int, ...]]  # state arrays in model order (the weights row)
    epochs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_epochs: int = 0
    weights: bool = False
    gradients: bool = False
    activation_dtype: str = "float32"
    model: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. a built-in run's config and hash

    def recording_hash(self) -> str:
        """Fingerprint of what a resumed recording must share: samples, layers and parameters."""
        digest = hashlib.sha256()
        for array in (self.inputs, self.split, self.dataset_index,
                      self.labels if self.labels is not None else np.zeros(0)):
            digest.update(np.ascontiguousarray(array).tobytes())
        layout = {"layers": [[x.name, x.module, list(x.shape)] for x in self.layers],
                  "output_layer": self.output_layer, "splits": list(self.split_names),
                  "parameters": {k: list(v) for k, v in self.parameters.items()},
                  "weights": self.weights, "gradients": self.gradients,
                  "activation_dtype": self.activation_dtype}
        digest.update(json.dumps(layout, sort_keys=True).encode())
        return digest.hexdigest()[:16]


def create_archive(path: Path, spec: ArchiveSpec, provenance: dict[str, Any]) -> None:
    """Write the root group (samples, coordinates, metadata) atomically: build aside, rename."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    root = zarr.open_group(str(partial), mode="w", zarr_format=3)
    n = len(spec.inputs)

    def put(name: str, values: np.ndarray, dims: list[str], **attrs: Any) -> None:
        arr = root.create_array(name, shape=values.shape, dtype=values.dtype,
                                dimension_names=dims, chunks=values.shape or None)
        arr[...] = values
        arr.attrs.update(attrs)

    if len(spec.epochs):
        put("epoch", np.asarray(spec.epochs, dtype=np.int64), ["epoch"],
            long_name="snapshot epoch (0 = before training)")
    if spec.n_epochs:
        put("history_epoch", np.arange(spec.n_epochs + 1), ["history_epoch"],
            long_name="epoch of the training history (0 = before training)")
    put("sample", np.arange(n), ["sample"])
    put("layer", np.array([x.name for x in spec.layers], dtype=np.dtypes.StringDType()), ["layer"])
    input_dims = ["sample", *[f"input_dim{i}" for i in range(spec.inputs.ndim - 1)]]
    put("inputs", spec.inputs, input_dims, long_name="recorded inputs")
    if spec.labels is not None:
        put("labels", spec.labels.astype(np.int64), ["sample"])
    put("dataset_index", spec.dataset_index.astype(np.int64), ["sample"],
        long_name="index of the sample in the source dataset")
    put("split", spec.split.astype(np.int8), ["sample"], flag_values=list(range(len(spec.split_names))),
        flag_meanings=" ".join(spec.split_names))
    update_attributes(root, {
        "schema_version": SCHEMA_VERSION,
        "name": spec.name,
        **spec.extra,
        "layers": [{"name": x.name, "module": x.module, "shape": list(x.shape),
                    "parameters": list(x.parameters)} for x in spec.layers],
        "output_layer": spec.output_layer,
        "splits": list(spec.split_names),
        "parts": {"weights": spec.weights, "gradients": spec.gradients, "history": True,
                  "labels": spec.labels is not None},
        "activation_dtype": spec.activation_dtype,
        "model": spec.model,
        "parameters": {k: list(v) for k, v in spec.parameters.items()},
        "recording_hash": spec.recording_hash(),
        "archive_id": uuid.uuid4().hex,  # new for every archive created: results name theirs
        "provenance": provenance,
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(path)


def metadata(attrs: dict[str, Any]) -> dict[str, Any]:
    """The root attributes in the current schema's terms; archives of schema 1.0 (whose facts
    lived in the training config they stored) are read by deriving them from that config."""
    if attrs.get("schema_version", "").startswith("1.0"):
        config = attrs["config"]
        attrs = {**attrs, "name": config["name"], "output_layer": attrs["layers"][-1]["name"],
                 "splits": list(SPLITS), "activation_dtype": config["archive"]["activation_dtype"],
                 "parts": {"weights": config["archive"]["store_weights"], "gradients": True,
                           "history": True, "labels": True},
                 "model": {"factory": config["model"]["architecture"], "config": config["model"]}}
    return attrs


# what every archive's root states (schema 1.0 through its stored config; `metadata`)
ARCHIVE_ATTRIBUTES = ("name", "layers", "output_layer", "splits", "parts")
GROWTH = 16  # snapshots (history rows: x64) allocated at once when the schedule is not known


def _history_rows(root: zarr.Group) -> int:
    return root["history_epoch"].shape[0] if "history_epoch" in root else GROWTH * 64


def create_seed_group(path: Path, seed: int) -> zarr.Group:
    """Pre-allocate one seed's arrays (idempotent: a half-created group is rebuilt)."""
    root = zarr.open_group(str(path), mode="r+", zarr_format=3)
    name = f"seed_{seed}"
    if name in root and root[name].attrs.get("initialised"):
        return root[name]
    if name in root:
        del root[name]
    meta = metadata(root.attrs.asdict())
    layers, parts = meta["layers"], meta["parts"]
    act_dtype = meta["activation_dtype"]
    n_snap = root["epoch"].shape[0] if "epoch" in root else GROWTH
    n_hist = _history_rows(root)
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
    if parts["gradients"]:
        for stat in ("grad_mean", "grad_std"):
            arr = group.create_array(stat, shape=(n_snap, len(layers)), chunks=(1, len(layers)),
                                     dtype="float64", fill_value=np.nan,
                                     dimension_names=["epoch", "layer"])
            arr.attrs["long_name"] = GRADIENT_LONG_NAMES[stat]
    for var in HISTORY_VARIABLES:
        group.create_array(var, shape=(n_hist,), chunks=(min(n_hist, 4096),), dtype="float64",
                           fill_value=np.nan, dimension_names=["history_epoch"])
    if parts["weights"]:
        n_params = sum(int(np.prod(shape)) for shape in meta["parameters"].values())
        per_chunk = max(1, CHUNK_BYTES // 4)
        arr = group.create_array("weights", shape=(n_snap, n_params),
                                 chunks=(1, min(n_params, per_chunk)), dtype="float32",
                                 fill_value=np.nan, dimension_names=["epoch", "parameter"])
        arr.attrs["long_name"] = ("all model parameters and float buffers (BatchNorm statistics), "
                                  "flattened in the order of the root attribute `parameters`")
    update_attributes(group, {"seed": seed, "committed_snapshots": 0, "snapshot_epochs": [],
                              "history_through": -1, "status": "training", "message": "",
                              "initialised": True})
    return group


GRADIENT_LONG_NAMES = {
    "grad_mean": "||mean over the epoch's mini-batches of the layer's gradient||_2",
    "grad_std": "sqrt(trace of the covariance of the layer's mini-batch gradients)",
}


def update_attributes(node: zarr.Group | zarr.Array, values: dict[str, Any]) -> None:
    """Set several attributes in one atomic rewrite of the node's metadata document."""
    node.attrs.put({**node.attrs.asdict(), **values})


def _fit(array: zarr.Array, index: int) -> zarr.Array:
    """Grow `array` along its first axis so that row `index` exists (doubling, for few resizes)."""
    if index >= array.shape[0]:
        array.resize((max(index + 1, 2 * array.shape[0]), *array.shape[1:]))
    return array


def file_record(path: Path) -> list[int]:
    """[size in bytes, CRC-32] of one chunk file: what a commit records of what it wrote."""
    data = path.read_bytes()
    return [len(data), zlib.crc32(data)]


class SeedWriter:
    """Writes one seed's snapshots; only the writer process of that seed uses it.

    Every commit records the chunk files it wrote (`integrity` seed attribute: per snapshot
    index, path -> [size, CRC-32]; the history's files as of the last commit), so a reader can
    tell a deleted or damaged chunk from a value.
    """

    def __init__(self, path: Path, seed: int):
        self.path = Path(path)
        self.group = create_seed_group(path, seed)

    def _chunk_files(self, array: zarr.Array, first_chunk: int | None = None) -> dict[str, list[int]]:
        """Files of `array` (those of one chunk row along the first axis, if given), by path
        relative to the seed group."""
        base = self.path / array.path / "c"
        where = base / str(first_chunk) if first_chunk is not None else base
        files = [where] if where.is_file() else sorted(p for p in where.rglob("*") if p.is_file())
        seed_dir = self.path / self.group.path
        return {str(f.relative_to(seed_dir)): file_record(f) for f in files}

    @property
    def committed(self) -> int:
        return int(self.group.attrs["committed_snapshots"])

    def add_session(self, environment: dict[str, Any]) -> None:
        """Append one training session (its environment, from `committed` snapshots on) to the
        seed's `sessions` attribute. Call it while no writer process of the seed runs."""
        sessions = list(self.group.attrs.get("sessions", []))
        update_attributes(self.group, {"sessions": [*sessions, {**environment,
                                                                "after_snapshots": self.committed}]})

    @property
    def committed_epochs(self) -> list[int]:
        return list(self.group.attrs.get("snapshot_epochs", []))

    @property
    def history_through(self) -> int:
        return int(self.group.attrs["history_through"])

    @property
    def status(self) -> str:
        return str(self.group.attrs["status"])

    def write_rows(self, index: int, layer: str, start: int, values: np.ndarray) -> None:
        """Rows `start:start + len(values)` of `layer`'s snapshot `index` (uncommitted until
        `commit` raises the commit point past it)."""
        _fit(self.group["activations"][layer], index)[index, start:start + len(values)] = values

    def write_snapshot(self, index: int, weights: dict[str, np.ndarray], grad_mean: np.ndarray | None,
                       grad_std: np.ndarray | None) -> dict[str, list[int]]:
        """Write the rest of one snapshot after its activation rows (`write_rows`); returns the
        files of the whole snapshot (see `integrity`)."""
        written = [_fit(array, index) for _, array in self.group["activations"].arrays()]
        if "weights" in self.group and weights:
            written.append(_fit(self.group["weights"], index))
            written[-1][index] = flatten_weights(weights)
        if "grad_mean" in self.group and grad_mean is not None:
            for name, values in (("grad_mean", grad_mean), ("grad_std", grad_std)):
                written.append(_fit(self.group[name], index))
                written[-1][index] = values
        files: dict[str, list[int]] = {}
        for array in written:  # one epoch per chunk along the first axis: chunk row = index
            files.update(self._chunk_files(array, index))
        return files

    def write_history(self, first_epoch: int, rows: dict[str, np.ndarray]) -> None:
        for var, values in rows.items():
            if len(values):
                array = _fit(self.group[var], first_epoch + len(values) - 1)
                array[first_epoch:first_epoch + len(values)] = values

    def commit(self, committed_snapshots: int, history_through: int, status: str = "training",
               message: str = "", snapshot_epochs: list[int] | None = None,
               files: dict[str, list[int]] | None = None) -> None:
        """The commit point: one atomic rewrite of the seed group's metadata document."""
        epochs = self.committed_epochs if snapshot_epochs is None else snapshot_epochs
        integrity = dict(self.group.attrs.get("integrity", {"snapshots": {}}))
        snapshots = {k: v for k, v in integrity["snapshots"].items() if int(k) < committed_snapshots}
        if files is not None and committed_snapshots:
            snapshots[str(committed_snapshots - 1)] = files
        history: dict[str, list[int]] = {}
        for var in HISTORY_VARIABLES:
            history.update(self._chunk_files(self.group[var]))
        # One write of the whole document: zarr's attrs.update writes once per key, and a kill
        # between those writes would leave a commit point half raised.
        update_attributes(self.group, {
            "committed_snapshots": committed_snapshots,
            "snapshot_epochs": [int(e) for e in epochs[:committed_snapshots]],
            "history_through": history_through, "status": status, "message": message,
            "integrity": {"snapshots": snapshots, "history": history}})


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
            if Path(self.path, "zarr.json").exists():
                raise ArchiveError(f"{self.path} exists but its metadata cannot be read ({err}); the "
                                   "archive is corrupted: move it away and retrain (--force)") from None
            raise ArchiveError(
                f"no archive at {self.path}: run `make train CONFIG=...` first, or give the path of "
                f"an archive a Recorder wrote ({err})"
            ) from None
        attrs = self.root.attrs.asdict()
        version = attrs.get("schema_version")
        if version is None:
            raise ArchiveError(f"{self.path} is not an infoplane archive (no schema_version)")
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ArchiveError(
                f"{self.path} has archive schema {version}; this infoplane reads "
                f"{SCHEMA_VERSION.split('.')[0]}.x: retrain with `make train --force` or use a "
                "matching release"
            )
        if "archive_recording" in attrs or is_results_store(self.path):
            raise ArchiveError(f"{self.path} is a results store, not an archive: give the archive it was "
                               f"computed from ({attrs.get('archive_path', 'its archive.zarr')}) as "
                               "--archive, and this store as --results")
        self.attrs = metadata(attrs)
        missing = [key for key in ARCHIVE_ATTRIBUTES if key not in self.attrs]
        if missing:
            raise ArchiveError(f"{self.path} is not an infoplane archive (its root attributes lack "
                               f"{', '.join(missing)}): give the path of an archive.zarr")
        self.name: str = self.attrs["name"]
        self.layers: list[str] = [layer["name"] for layer in self.attrs["layers"]]
        self.layer_shapes = {layer["name"]: tuple(layer["shape"]) for layer in self.attrs["layers"]}
        self.layer_parameters = {layer["name"]: list(layer["parameters"]) for layer in self.attrs["layers"]}
        self.output_layer: str = self.attrs["output_layer"]
        self.split_names: tuple[str, ...] = tuple(self.attrs["splits"])
        self.parts: dict[str, bool] = dict(self.attrs["parts"])
        self.snapshot_epochs: np.ndarray = (self._read("epoch") if "epoch" in self.root
                                            else np.zeros(0, dtype=np.int64))
        self.labels: np.ndarray | None = self._read("labels") if self.parts["labels"] else None
        self.split: np.ndarray = self._read("split")

    @property
    def identity(self) -> str:
        """What ties results to this archive: its `archive_id`, new whenever an archive is created
        (so a retrained one differs); schema 1.0 archives: their training hash."""
        return str(self.attrs.get("archive_id") or self.attrs.get("training_hash"))

    @property
    def splits(self) -> list[str]:
        """Split names estimates can use: "all", then the recorded ones (unless "all" is the only)."""
        return ["all", *[s for s in self.split_names if s != "all"]]

    def split_index(self, split: str) -> np.ndarray:
        return split_indices(self.split, split, self.split_names)

    def split_labels(self, index: np.ndarray) -> np.ndarray:
        """Labels of the samples at `index`; one class for all when none were recorded."""
        return self.labels[index] if self.labels is not None else np.zeros(len(index), dtype=np.int64)

    @property
    def config(self) -> dict[str, Any] | None:
        """The training config a built-in run stored (a plain dict, never re-validated)."""
        return self.attrs.get("config")

    def _array(self, name: str, group: zarr.Group | None = None) -> zarr.Array:
        return self._open(self.root if group is None else group, name, "array")

    def _open(self, parent: zarr.Group, name: str, kind: str) -> Any:
        """A child node; a missing one, or one whose zarr.json is unreadable, is an ArchiveError."""
        where = f"{parent.path}/{name}".lstrip("/")
        try:
            return parent[name]
        except KeyError:
            raise ArchiveError(f"{self.path}: {kind} {where} is missing; the archive is incomplete "
                               "or corrupted: retrain with --force") from None
        except (ValueError, TypeError) as err:  # a torn or foreign zarr.json (JSONDecodeError)
            raise ArchiveError(f"{self.path}: the metadata of {kind} {where} ({where}/zarr.json) "
                               f"cannot be read ({type(err).__name__}: {err}); the archive is "
                               "corrupted: retrain that seed with --force (or record it again)") from None

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
    def dataset_index(self) -> np.ndarray:
        return self._read("dataset_index")

    @property
    def seeds(self) -> list[int]:
        local = Path(self.path)
        if local.is_dir():  # listed from the folder: one unreadable seed must not hide the others
            names = sorted(p.name for p in local.iterdir() if p.name.startswith("seed_") and p.is_dir())
        else:
            names = [k for k in self.root.group_keys() if k.startswith("seed_")]
        seeds = [int(k.removeprefix("seed_")) for k in names if k.removeprefix("seed_").isdigit()]
        return sorted(s for s in seeds if self.seed_group(s).attrs.get("initialised"))

    def seed_group(self, seed: int) -> zarr.Group:
        return self._open(self.root, f"seed_{seed}", "seed group")

    def seed_status(self, seed: int) -> dict[str, Any]:
        return dict(self.seed_group(seed).attrs)

    def committed_epochs(self, seed: int) -> np.ndarray:
        """Snapshot epochs of `seed` whose data are completely written."""
        attrs = self.seed_group(seed).attrs
        n = int(attrs["committed_snapshots"])
        if "snapshot_epochs" in attrs:  # schema 1.1 records each seed's own epochs
            return np.asarray(attrs["snapshot_epochs"][:n], dtype=np.int64)
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
        manifest = self._manifest(seed)

        def read(epoch: int) -> np.ndarray:
            index = self._committed_index(committed, seed, epoch)
            self._check_files(manifest, seed, index, f"activations/{layer}/")
            return self._index(array, index)
        return read

    def _manifest(self, seed: int) -> dict[str, dict[str, list[int]]]:
        """Per committed snapshot index: the files its commit wrote (schema 1.0: none recorded)."""
        return self.seed_group(seed).attrs.get("integrity", {}).get("snapshots", {})

    def _check_files(self, manifest: dict[str, dict[str, list[int]]], seed: int, index: int,
                     prefix: str) -> None:
        """A missing or resized chunk is an error naming it: zarr would read its fill value."""
        for name, (size, _) in manifest.get(str(index), {}).items():
            if name.startswith(prefix):
                problem = self._file_problem(seed, name, size)
                if problem:
                    raise ArchiveError(self._damage_message(seed, index, name, problem))

    def _file_problem(self, seed: int, name: str, size: int, crc: int | None = None) -> str | None:
        path = Path(self.path) / f"seed_{seed}" / name
        if not path.is_file():
            return "is missing"
        if path.stat().st_size != size:
            return f"has {path.stat().st_size} bytes, its commit wrote {size}"
        if crc is not None and file_record(path)[1] != crc:
            return "differs from what its commit wrote (checksum)"
        return None

    def _damage_message(self, seed: int, index: int | None, name: str, problem: str) -> str:
        where = f"snapshot {index} of seed {seed}" if index is not None else f"history of seed {seed}"
        return (f"{self.path}: chunk seed_{seed}/{name} ({where}) {problem}: the archive is damaged; "
                f"retrain that seed (`make train ... --force`, or record it again) and run "
                f"`python -m stages.verify {self.path}` to list all damage")

    def verify(self, progress: bool = False) -> list[str]:
        """Every committed chunk of every seed against its commit's record: the damage found.
        `progress`: a bar on stderr counts the bytes read."""
        records = []  # (seed, snapshot index or None for history, file, size, CRC-32)
        for seed in self.seeds:
            attrs = self.seed_group(seed).attrs
            if "integrity" not in attrs:
                continue  # schema 1.0 recorded nothing to verify against
            n = int(attrs["committed_snapshots"])
            records += [(seed, int(index), name, size, crc)
                        for index, files in attrs["integrity"]["snapshots"].items() if int(index) < n
                        for name, (size, crc) in files.items()]
            records += [(seed, None, name, size, crc)
                        for name, (size, crc) in attrs["integrity"].get("history", {}).items()]
        damage = []
        with tqdm(total=sum(record[3] for record in records), unit="B", unit_scale=True, mininterval=1.0,
                  desc=f"verify {self.name}", disable=not progress, dynamic_ncols=True) as bar:
            for seed, index, name, size, crc in records:
                if problem := self._file_problem(seed, name, size, crc):
                    damage.append(self._damage_message(seed, index, name, problem))
                bar.update(size)
        return damage

    def weights(self, seed: int, epoch: int) -> dict[str, np.ndarray]:
        group = self.seed_group(seed)
        if "weights" not in group:
            raise ArchiveError(f"{self.path}: weights were not recorded (Recorder(weights=True), "
                               "archive.store_weights)")
        index = self.epoch_index(seed, epoch)
        self._check_files(self._manifest(seed), seed, index, "weights/")
        row = self._read("weights", group, index)
        return unflatten_weights(row, self.attrs["parameters"])

    def gradient_stats(self, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Per committed snapshot and layer: gradient mean norm and std; None if not recorded."""
        n = len(self.committed_epochs(seed))
        group = self.seed_group(seed)
        if "grad_mean" not in group:
            return None
        manifest = self._manifest(seed)
        for index in range(n):
            self._check_files(manifest, seed, index, "grad_")
        return self._read("grad_mean", group)[:n], self._read("grad_std", group)[:n]

    def history(self, seed: int) -> dict[str, np.ndarray]:
        group = self.seed_group(seed)
        through = int(group.attrs["history_through"])
        return {var: self._read(var, group)[: through + 1] for var in HISTORY_VARIABLES}

    def describe(self) -> str:
        lines = [f"archive {self.path} (schema {self.attrs['schema_version']}, run {self.name})",
                 f"  layers: {', '.join(f'{k}{list(v)}' for k, v in self.layer_shapes.items())}"]
        for seed in self.seeds:
            a = self.seed_status(seed)
            sessions = a.get("sessions", [])
            lines.append(f"  seed {seed}: {a['committed_snapshots']} snapshots, status "
                         f"{a['status']} {a['message']}".rstrip()
                         + (f"; trained in {len(sessions)} session(s): "
                            + "; ".join(dict.fromkeys(map(_environment, sessions))) if sessions else ""))
        return "\n".join(lines)

    def training_environments(self) -> dict[str, list[int]]:
        """Each environment seeds were trained in ('torch 2.x, 1 thread(s), cpu on host') -> those
        seeds, from their `sessions` (empty for seeds trained before schema 1.2)."""
        out: dict[str, list[int]] = {}
        for seed in self.seeds:
            for session in self.seed_status(seed).get("sessions", []):
                seeds = out.setdefault(f"{_environment(session)} on {session.get('host')}", [])
                if seed not in seeds:
                    seeds.append(seed)
        return out


def _environment(session: dict[str, Any]) -> str:
    """One training session's environment in words: torch version, threads, device (and GPU)."""
    device = f"{session.get('device')} ({session['gpu']})" if "gpu" in session else session.get("device")
    return f"torch {session.get('torch')}, {session.get('torch_threads')} thread(s), {device}"


def remove_litter(path: Path) -> list[Path]:
    """Delete what killed writers leave behind: zarr's `*.partial` temporary chunk files inside
    the archive and a half-built `<archive>.partial`. Call it only while no writer runs."""
    litter = [*path.rglob("*.partial")] if path.exists() else []
    for file in litter:
        file.unlink(missing_ok=True)
    aside = path.with_name(path.name + ".partial")
    if aside.exists():
        shutil.rmtree(aside, ignore_errors=True)
        litter.append(aside)
    return litter


def prepare_for_writing(path: Path) -> None:
    """Drop consolidated metadata before writing: it would go stale as seeds commit."""
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    if meta.pop("consolidated_metadata", None) is not None:
        tmp = meta_path.with_name("zarr.json.tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(meta_path)


def consolidate(path: Path) -> None:
    """Consolidate metadata once training has stopped, so xarray opens the store quickly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is not yet in the v3 spec
        zarr.consolidate_metadata(str(path))
