"""Information in the weights (Achille et al.): trace of the model Fisher per layer.

    from pipeline.fisher import fisher_traces
    traces = fisher_traces(model, probe_inputs, {"dense1": ["dense1.1.weight", ...]}, 3)

F = E_x E_{y ~ p_w(.|x)} [grad log p_w(y|x) grad^T]: labels are sampled from the model (the
true label would give the biased empirical Fisher), on a fixed probe set, averaged over a few
label-sampling seeds. The trace of a layer's block is the mean squared norm of the per-sample
gradient of that layer's parameters, computed for all samples at once with torch.func.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from pipeline.archive import ArchiveError, ArchiveReader
from pipeline.config import ConfigError, ModelConfig, from_dict


def balanced_probe(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Indices of a fixed probe set with (as far as the classes allow) equal counts per class."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = max(1, size // len(classes))
    picks = [rng.choice(np.flatnonzero(labels == c), min(per_class, int((labels == c).sum())),
                        replace=False) for c in classes]
    return np.sort(np.concatenate(picks))


def model_from_spec(spec: dict, input_shape: tuple[int, ...], n_classes: int) -> torch.nn.Module:
    """The untrained network of a model spec (`{"factory": ..., "config": {...}}`, as the Recorder
    takes it and the archive stores it); ConfigError where its settings cannot be read."""
    from pipeline.models import build_model

    known = {f for f in ModelConfig.__dataclass_fields__}
    # leniently: settings this release does not know are left out, never re-validated
    cfg = from_dict(ModelConfig, {k: v for k, v in spec.get("config", {}).items() if k in known})
    if ":" in spec["factory"]:
        cfg = dataclasses.replace(cfg, factory=spec["factory"])
    else:
        cfg = dataclasses.replace(cfg, architecture=spec["factory"], factory="")
    with torch.random.fork_rng(devices=[]):  # initialisation draws leave the caller's RNG alone
        return build_model(cfg, tuple(input_shape), n_classes)


def rebuild_model(archive: ArchiveReader) -> torch.nn.Module:
    """The archived network, untrained, from the archive's model factory and its settings."""
    spec = archive.attrs.get("model")
    if spec is None:
        raise ArchiveError(f"{archive.path} records no model factory: Fisher information needs one")
    n_classes = archive.layer_shapes[archive.output_layer][0]
    try:
        return model_from_spec(spec, tuple(archive.inputs.shape[1:]), n_classes)
    except ConfigError as err:  # the settings only: a factory's errors are its own
        raise ArchiveError(f"{archive.path}: the archived model settings cannot be read ({err})") from None


def parameter_difference(recorded: dict[str, tuple[int, ...]],
                         built: dict[str, tuple[int, ...]]) -> str | None:
    """The first parameters whose names or shapes differ between two networks, or None."""
    differing = [f"{name} {recorded.get(name, 'absent')} recorded, {built.get(name, 'absent')} built"
                 for name in dict.fromkeys([*recorded, *built]) if recorded.get(name) != built.get(name)]
    return "; ".join(differing[:3]) + ("; ..." if len(differing) > 3 else "") if differing else None


def spec_mismatch(spec: dict, input_shape: tuple[int, ...], n_classes: int,
                  recorded: dict[str, tuple[int, ...]]) -> str | None:
    """Why `spec` cannot rebuild the network whose parameters are `recorded` ("factory 'f'
    fails (...)" or "factory 'f' builds other parameters than were recorded (...)"), or None."""
    from pipeline.models import state_arrays

    try:
        model = model_from_spec(spec, input_shape, n_classes)
    except Exception as err:  # noqa: BLE001 - the user's factory: any error, named in one line
        return f"factory {spec.get('factory')!r} fails ({type(err).__name__}: {err})"
    built = {name: tuple(value.shape) for name, value in state_arrays(model).items()}
    difference = parameter_difference({name: tuple(shape) for name, shape in recorded.items()}, built)
    return difference and (f"factory {spec.get('factory')!r} builds other parameters than were recorded "
                           f"({difference})")


def check_rebuilt_model(archive: ArchiveReader) -> None:
    """ArchiveError, in one line, unless the archive's model factory builds a network whose
    parameters are those recorded (names and shapes): run once before the Fisher tasks, which
    would otherwise each fail in `load_state_dict`, on every worker and every retry."""
    problem = spec_mismatch(archive.attrs["model"], tuple(archive.inputs.shape[1:]),
                            archive.layer_shapes[archive.output_layer][0], archive.attrs["parameters"])
    if problem:
        raise ArchiveError(f"Fisher information: the archive's model {problem}; restore the factory the "
                           "archive was recorded with, or leave the Fisher traces out "
                           "(`--set estimate.fisher=false`)")


def fisher_traces(model: torch.nn.Module, inputs: torch.Tensor, layer_params: dict[str, list[str]],
                  label_seeds: int = 3, batch_size: int = 256) -> dict[str, float]:
    """Trace of the Fisher block of each layer's parameters (`layer_params`: layer -> parameter
    names), averaged over label seeds. The model's output must be the class logits."""
    model.eval()  # no training noise, BatchNorm on its archived statistics
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    layer_params = {layer: [n for n in names if n in params] for layer, names in layer_params.items()}

    def log_prob(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (p, buffers), (x[None],))
        return -torch.nn.functional.cross_entropy(logits, y[None])

    per_sample_grad = vmap(grad(log_prob), in_dims=(None, 0, 0))
    totals = {layer: 0.0 for layer, names in layer_params.items() if names}  # none: no trace
    for seed in range(label_seeds):
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, len(inputs), batch_size):
            x = inputs[start:start + batch_size]
            with torch.no_grad():
                probs = torch.softmax(model(x), dim=1)
            y = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(x.device)
            grads = per_sample_grad(params, x, y)
            for layer, names in layer_params.items():
                totals[layer] += float(sum((grads[n] ** 2).sum() for n in names))
    return {layer: total / (label_seeds * len(inputs)) for layer, total in totals.items()}
