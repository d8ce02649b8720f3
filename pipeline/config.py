"""Experiment configuration: TOML files loaded into frozen dataclasses.

    from pipeline.config import load_config
    cfg = load_config("configs/szt_tanh.toml", overrides=["train.n_epochs=50", "seeds=[0,1]"])

Unknown keys and wrong types are rejected at load time with the key's dotted path, so a typo
never silently falls back to a default. Every field documents what the papers used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import KnownFailure


class ConfigError(KnownFailure, ValueError):
    """A configuration file or override is malformed; the message names the key and the fix."""


@dataclass(frozen=True)
class DataConfig:
    """Where the samples come from and how they are split into train and test."""

    # a registered dataset (szt, mnist, cifar10, synthetic: pipeline.data) or, with `factory`,
    # any function `(cfg: DataConfig) -> SplitData` named as "package.module:function"
    dataset: str = "szt"
    factory: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # free keywords for a factory
    root: str = "data/datasets"  # torchvision root for mnist / cifar10
    download: bool = False  # let torchvision download when files are missing
    # "native": the dataset's own train/test split; "train"/"test": split that one split into a
    # train and a test part (so the MNIST test set alone can serve a real run).
    source_split: Literal["native", "train", "test"] = "native"
    train_fraction: float = 0.8  # used by szt, synthetic and non-native source splits
    split_seed: int = 0  # the shuffled split (the original SZT code did not shuffle)
    max_train: int = 0  # 0: all; otherwise the first max_train of the shuffled train split
    max_test: int = 0
    # synthetic only: class-conditional images of this shape (CIFAR-shaped data without files)
    synthetic_shape: tuple[int, ...] = (3, 32, 32)
    synthetic_samples: int = 2000
    n_classes: int = 10


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture. Layers are recorded under stable names (see pipeline.models)."""

    # a registered network (mlp, mnist_cnn, vgg16: pipeline.models) or, with `factory`, any
    # function `(input_shape, n_classes, cfg: ModelConfig) -> nn.Module` as "package.module:function"
    architecture: str = "mlp"
    factory: str = ""
    layers: tuple[str, ...] = ()  # module names or globs to record; (): the model's own list
    options: dict[str, Any] = field(default_factory=dict)  # free keywords for a factory
    widths: tuple[int, ...] = (10, 7, 5, 4, 3)  # MLP hidden widths (SZT: 12-10-7-5-4-3-2)
    activation: Literal["tanh", "relu", "linear", "softsign"] = "tanh"
    # SZT: truncated normal, std 1/sqrt(fan_in), zero biases; "default": torch's own init
    init: Literal["truncated_normal", "default"] = "truncated_normal"
    # Butakov et al.: stochastic network, T = f(x) + noise during training
    noise_std: float = 0.0
    noise_mode: Literal["relative", "absolute"] = "relative"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. SZT papers: Adam 4e-4, batch 256 (Saxe) or 512 (original), 8000+ epochs."""

    n_epochs: int = 1000
    batch_size: int = 256
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 4e-4
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    device: str = "cpu"  # "cuda" where a GPU is present
    parallel_seeds: int = 0  # processes training seeds at once; 0: one per core
    threads_per_seed: int = 0  # torch threads in each seed process; 0: cores / processes


@dataclass(frozen=True)
class ArchiveConfig:
    """What is written into the Zarr archive and when."""

    # "log": unique(int(logspace(0, log2 E, n_log_points, base=2))) - 1 (SZT original: 274 for
    # E = 8000); "every": every `every`-th epoch and the last; "list": exactly `epochs`.
    snapshots: Literal["log", "every", "list"] = "log"
    n_log_points: int = 400
    every: int = 1
    epochs: tuple[int, ...] = ()
    samples_per_split: int = 0  # inputs recorded per split; 0: all (SZT: all 4096 patterns)
    sample_seed: int = 0
    store_weights: bool = True  # needed by the Fisher estimator
    activation_dtype: Literal["float32", "float16"] = "float32"
    # a snapshot with NaN/inf activations (or beyond float16's range): "stop" the seed, or "warn"
    nonfinite: Literal["stop", "warn"] = "stop"
    enabled: bool = True  # False only for benchmarks: train without recording anything


@dataclass(frozen=True)
class EstimateConfig:
    """How `make estimate` covers the archive (the estimators themselves: [estimators.*])."""

    # "all": every recorded sample (SZT papers: all 4096 patterns); "train"/"test": one split;
    # names or shell-style patterns of the archive's splits ("*": "all", then each recorded one)
    splits: tuple[str, ...] = ("*",)
    n_workers: int = 0  # local cluster worker processes; 0: one per core
    retries: int = 2  # a failed task is retried this often (a dead worker costs its tasks only)
    fisher: bool = True  # Fisher trace per layer from the archived weights
    fisher_probe_size: int = 300  # fixed balanced probe set (Achille et al.)
    fisher_label_seeds: int = 3  # labels sampled from the model, averaged over these seeds


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: data, network, training and archiving, for several seeds."""

    name: str
    seeds: tuple[int, ...] = (0,)
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    # [estimators.<entry>] tables: {"method": ..., **params}; validated by the estimate stage
    estimators: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def training_hash(self) -> str:
        """Hash of what determines each seed's archived data (seeds may be added later).

        Keys added to the schema later are left out while at their defaults, so an archive
        trained before they existed still matches its unchanged config.
        """
        d = self.to_dict()
        for section, defaults in _LATER_KEYS.items():
            for key, default in defaults.items():
                if d[section].get(key) == default:
                    d[section].pop(key)
        d.pop("estimators")
        d.pop("estimate")
        d.pop("seeds")
        d.pop("description")
        d["train"].pop("parallel_seeds")
        d["train"].pop("threads_per_seed")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_LATER_KEYS = {"archive": {"nonfinite": "stop"}, "data": {"factory": "", "options": {}},
               "model": {"factory": "", "layers": (), "options": {}}}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`, converting TOML lists to tuples."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        return from_dict(tp, value, path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not {_type_name(tp)}")
        return value
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        _, val_tp = typing.get_args(tp)
        for k, v in value.items():
            if typing.get_origin(val_tp) is dict and not isinstance(v, dict):
                raise ConfigError(f"{path}.{k}: expected a table, got {v!r}")
        return {k: dict(v) if isinstance(v, dict) else v for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if isinstance(tp, types.UnionType):  # pragma: no cover - no unions in the schema yet
        raise ConfigError(f"{path}: unsupported union type")
    raise ConfigError(f"{path}: unsupported type {tp!r}")


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(
            f"{where}: unknown key; valid keys{' of ' + path if path else ''} are "
            + ", ".join(sorted(names))
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        key_path = f"{path}.{f.name}" if path else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key_path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_path}: required key is missing")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key.sub=value``; the value is read as TOML, else taken as a bare string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r}: empty key part")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a table")
        node[keys[-1]] = value
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load and validate a TOML experiment file, applying ``key.sub=value`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pick one of configs/*.toml")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err
    data = apply_overrides(data, list(overrides or []))
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


@dataclass(frozen=True)
class EstimatorsConfig:
    """The part of a config the estimate stage reads: `[estimate]` and `[estimators.*]`."""

    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    estimators: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_estimators_config(path: str | Path, overrides: list[str] | None = None) -> EstimatorsConfig:
    """The estimate stage's tables of a TOML file: a file of only `[estimate]` and
    `[estimators.*]` tables, or a whole experiment config (whose other tables are not read)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; write one with [estimators.<entry>] tables")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err
    try:
        return estimators_config(data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def estimators_config(data: dict[str, Any], overrides: list[str] | None = None) -> EstimatorsConfig:
    """`load_estimators_config` of tables already read (`--set` overrides applied to them)."""
    data = with_sweeps_expanded(apply_overrides(data, list(overrides or [])))
    if "name" in data:  # a whole experiment config
        cfg = config_from_dict(data)
        return EstimatorsConfig(cfg.estimate, cfg.estimators)
    out = from_dict(EstimatorsConfig, data)
    validate_estimate(out.estimate, out.estimators)
    return out


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    cfg = from_dict(ExperimentConfig, with_sweeps_expanded(data))
    validate(cfg)
    return cfg


# A run's name is a folder under the runs directory and an estimator entry's name is part of
# figure file names: neither may hold a path separator or start with a dot.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def with_sweeps_expanded(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with its [estimators.*] tables' sweeps expanded (`expand_sweeps`)."""
    if not isinstance(data.get("estimators"), dict):
        return data
    return {**data, "estimators": expand_sweeps(data["estimators"])}


def expand_sweeps(estimators: dict[str, Any]) -> dict[str, Any]:
    """Each entry with a `sweep = {parameter = [values], ...}` table becomes one entry per
    combination of the values (in the order given), named `<entry>_<parameter>_<value>` for
    each swept parameter: `[estimators.binning] method = "binning", sweep = {n_bins = [10, 30]}`
    gives `binning_n_bins_10` and `binning_n_bins_30`, each a plain entry. A swept parameter
    the table also sets takes the sweep's values (so `--set` can sweep a default entry's
    parameter). Other entries pass through as they are."""
    out: dict[str, Any] = {}
    for entry, table in estimators.items():
        if not isinstance(table, dict) or "sweep" not in table:
            out[entry] = table
            continue
        for name, expanded in _sweep_entries(entry, table):
            if name in estimators or name in out:
                raise ConfigError(f"estimators.{entry}.sweep: the entry {name!r} it makes is also "
                                  "named elsewhere; rename one of them")
            out[name] = expanded
    return out


def _sweep_entries(entry: str, table: dict[str, Any]):
    sweep, fixed = table["sweep"], {k: v for k, v in table.items() if k != "sweep"}
    if not isinstance(sweep, dict) or not sweep:
        raise ConfigError(f"estimators.{entry}.sweep: a table {{parameter = [values]}}, e.g. "
                          "sweep = {n_bins = [10, 30, 100]}")
    for key, values in sweep.items():
        if not isinstance(values, list) or not values or len(set(map(repr, values))) < len(values):
            raise ConfigError(f"estimators.{entry}.sweep.{key}: a list of distinct values, got {values!r}")
    for combination in itertools.product(*sweep.values()):
        name = "_".join([entry, *(f"{k}_{_name_part(v)}" for k, v in zip(sweep, combination, strict=True))])
        check_name(f"estimators.{entry}.sweep", name)
        yield name, {**fixed, **dict(zip(sweep, combination, strict=True))}


def _name_part(value: Any) -> str:
    """A swept value as part of an entry name: numbers as TOML writes them, booleans lower-case."""
    return str(value).lower() if isinstance(value, bool) else str(value)


MAX_NAME_LENGTH = 100  # names become parts of file names (figures, folders), which stop at 255


def check_name(key: str, name: str) -> None:
    """Refuse a name (of a run, an estimator entry, a split) that cannot be part of a file name."""
    if not NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{key}: {name!r} is not a valid name; use letters, digits and _ . + - "
                          f"(starting with a letter or digit, at most {MAX_NAME_LENGTH} characters)")


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    check_name("name", cfg.name)
    if not cfg.seeds:
        raise ConfigError("seeds: give at least one seed")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError("seeds: duplicate seeds")
    if min(cfg.seeds) < 0:  # numpy's generators take none, and the archive names groups seed_<n>
        raise ConfigError(f"seeds: must be whole numbers >= 0, got {min(cfg.seeds)}")
    if cfg.train.n_epochs < 1:
        raise ConfigError("train.n_epochs: must be at least 1")
    if cfg.train.batch_size < 1:
        raise ConfigError("train.batch_size: must be at least 1")
    if not cfg.train.lr > 0:
        raise ConfigError(f"train.lr: must be positive, got {cfg.train.lr}")
    if any(w < 1 for w in cfg.model.widths):
        raise ConfigError(f"model.widths: every width must be at least 1, got {list(cfg.model.widths)}")
    if not 0.0 < cfg.data.train_fraction < 1.0:
        raise ConfigError("data.train_fraction: must lie strictly between 0 and 1")
    if cfg.archive.snapshots == "list":
        if not cfg.archive.epochs:
            raise ConfigError("archive.epochs: required when archive.snapshots = 'list'")
        bad = [e for e in cfg.archive.epochs if not 0 <= e <= cfg.train.n_epochs]
        if bad:
            raise ConfigError(f"archive.epochs: {bad} outside 0..train.n_epochs")
    if cfg.archive.every < 1:
        raise ConfigError("archive.every: must be at least 1")
    if cfg.model.architecture == "mlp" and not cfg.model.factory and not cfg.model.widths:
        raise ConfigError("model.widths: an MLP needs at least one hidden layer")
    _check_registered(cfg)
    validate_estimate(cfg.estimate, cfg.estimators)


def _check_registered(cfg: ExperimentConfig) -> None:
    """Built-in names must exist; entry points are imported by the stage that needs them."""
    from pipeline.data import DATASETS  # late: the registries live with their code
    from pipeline.models import MODELS

    for key, registry, name, factory in (("model.architecture", MODELS, cfg.model.architecture,
                                          cfg.model.factory),
                                         ("data.dataset", DATASETS, cfg.data.dataset, cfg.data.factory)):
        if not factory and name not in registry:
            raise ConfigError(f"{key}: {name!r} is not registered ({', '.join(registry.names())});"
                              f" for your own, set {key.split('.')[0]}.factory = 'package.module:function'")


def validate_estimate(estimate: EstimateConfig, estimators: dict[str, dict[str, Any]]) -> None:
    """Checks of the [estimate] and [estimators.*] tables, which an archive's own run may use."""
    if not estimate.splits or len(set(estimate.splits)) != len(estimate.splits):
        raise ConfigError(f"estimate.splits: {list(estimate.splits)} must name distinct splits or "
                          "patterns ('all' is every recorded sample, '*' every split)")
    for entry, table in estimators.items():
        check_name(f"estimators.{entry}", entry)
        if "method" not in table:
            raise ConfigError(f"estimators.{entry}.method: required key is missing")
        from pipeline.estimators import ParameterError, check_parameters, get_estimator  # late: torch
        from pipeline.uncertainty import check_options, split_options

        params, options = split_options(table)
        try:
            check_parameters(table["method"], params)
            check_options({k: v for k, v in table.items() if k in options},
                          get_estimator(table["method"]).schemes)
        except ParameterError as err:
            raise ConfigError(f"estimators.{entry}.{err.parameter}: {err.reason}") from None
        except ValueError as err:  # RegistryError included
            raise ConfigError(f"estimators.{entry}: {err}") from None
