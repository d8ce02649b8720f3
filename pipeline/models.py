"""The built-in networks, registered by name; any other `nn.Module` is recorded the same way.

    from pipeline.models import build_model
    model = build_model(cfg.model, input_shape=(12,), n_classes=2)
    model.recorded_layers       # ["dense1", ..., "softmax"]: module names, recorded by hooks

A built-in network is a plain module whose children are its named blocks: MLP `dense1..denseK`,
MNIST CNN `conv1..conv3`, `dense1`, VGG-16 `conv1..conv13`, `dense1`, `dense2` (16 recorded
layers with `softmax`, as in Wickstrom et al.), then `logits` and `softmax`. The forward pass
returns the logits; in evaluation mode it also runs `softmax`, so that the recorder's hook sees
the class probabilities (training needs only the logits). Convolutional layers keep C x H x W.

A model of one's own: `model.factory = "package.module:function"` in a config, with the
signature of `build_model`'s factories, `(input_shape, n_classes, cfg) -> nn.Module`; the
layers to record come from `model.layers` (module names or globs) or the module's own
`recorded_layers` attribute.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.registry import Registry

MODELS = Registry("model")
register_model = MODELS.register
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "linear": nn.Identity, "softsign": nn.Softsign}


class NoisyActivation(nn.Module):
    """Butakov et al.'s stochastic layer: adds noise in training mode only.

    Recorded activations are the clean f(x); estimators add their own, seeded noise.
    """

    def __init__(self, std: float, mode: str):
        super().__init__()
        self.std, self.mode = std, mode

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.std <= 0:
            return h
        noise = torch.randn_like(h) * self.std
        return h + (h * noise if self.mode == "relative" else noise)


class BlockNetwork(nn.Module):
    """Named blocks applied in order, then `logits`; `softmax` runs in evaluation mode only."""

    def __init__(self, blocks: dict[str, nn.Module]):
        super().__init__()
        for name, block in blocks.items():
            self.add_module(name, block)
        self.softmax = nn.Softmax(dim=1)
        self.recorded_layers = [name for name in blocks if name != "logits"] + ["softmax"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for name, block in self.named_children():
            if name != "softmax":
                h = block(h)
        if not self.training:
            self.softmax(h)  # for the recorder's hook: the probabilities are a recorded layer
        return h


def state_arrays(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and floating-point buffers (BatchNorm statistics), in state-dict order."""
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def _truncated_normal_(linear: nn.Linear) -> None:
    std = 1.0 / math.sqrt(linear.in_features)
    nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(linear.bias)


@register_model("mlp")
def mlp(input_shape: tuple[int, ...], n_classes: int, cfg: ModelConfig) -> BlockNetwork:
    """SZT's fully connected network: `widths` hidden layers of `activation`, then the logits."""
    if not cfg.widths:
        raise ValueError("model.widths: an MLP needs at least one hidden layer")
    blocks = {}
    sizes = [math.prod(input_shape), *cfg.widths]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
        blocks[f"dense{i}"] = nn.Sequential(
            nn.Flatten(), nn.Linear(a, b), ACTIVATIONS[cfg.activation](),
            NoisyActivation(cfg.noise_std, cfg.noise_mode),
        )
    blocks["logits"] = nn.Sequential(nn.Linear(sizes[-1], n_classes))
    model = BlockNetwork(blocks)
    if cfg.init == "truncated_normal":
        for m in model.modules():
            if isinstance(m, nn.Linear):
                _truncated_normal_(m)
    return model


def _image_shape(name: str, input_shape: tuple[int, ...], size: int) -> int:
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs image inputs (C, H, W), got {input_shape}")
    if input_shape[1:] != (size, size):
        raise ValueError(f"{name} expects {size}x{size} inputs, got {input_shape}")
    return input_shape[0]


@register_model("mnist_cnn")
def mnist_cnn(input_shape: tuple[int, ...], n_classes: int, cfg: ModelConfig) -> BlockNetwork:
    """Butakov et al.: 3 x (Conv 3x3, MaxPool 2, LeakyReLU), Linear(32, 32), Linear(32, 10)."""
    channels = [_image_shape("mnist_cnn", input_shape, 28), 8, 16, 32]
    blocks = {}
    for i in range(3):
        blocks[f"conv{i + 1}"] = nn.Sequential(
            nn.Conv2d(channels[i], channels[i + 1], 3), nn.MaxPool2d(2), nn.LeakyReLU(),
            NoisyActivation(cfg.noise_std, cfg.noise_mode),
        )
    blocks["dense1"] = nn.Sequential(
        nn.Flatten(), nn.Linear(32, 32), nn.LeakyReLU(), NoisyActivation(cfg.noise_std, cfg.noise_mode),
    )
    blocks["logits"] = nn.Sequential(nn.Linear(32, n_classes))
    return BlockNetwork(blocks)


@register_model("vgg16")
def vgg16(input_shape: tuple[int, ...], n_classes: int, cfg: ModelConfig) -> BlockNetwork:
    """VGG-16 with batch norm for 32x32 inputs: torchvision's feature extractor, 512-512-10 head."""
    from torchvision.models import vgg16_bn

    in_channels = _image_shape("vgg16", input_shape, 32)
    features = vgg16_bn(weights=None).features
    if in_channels != 3:
        features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
    # One block per conv (conv, bn, relu), recorded after its non-linearity; each max-pool
    # opens the block that follows it, so conv outputs are recorded before pooling.
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    current: list[nn.Module] = []
    for module in features:
        current.append(module)
        if isinstance(module, nn.ReLU):
            blocks[f"conv{len(blocks) + 1}"] = nn.Sequential(*current)
            current = []
    last_pool = current.pop()  # the feature extractor ends with a pool
    blocks["dense1"] = nn.Sequential(last_pool, nn.Flatten(), nn.Linear(512, 512), nn.ReLU())
    blocks["dense2"] = nn.Sequential(nn.Linear(512, 512), nn.ReLU())
    blocks["logits"] = nn.Sequential(nn.Linear(512, n_classes))
    return BlockNetwork(blocks)


MODELS.seal()  # the built-ins above: a user's register_model picks another name


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The network of `cfg` (a registered name or `cfg.factory`) for inputs of `input_shape`."""
    factory = MODELS.get(cfg.factory or cfg.architecture)
    model = factory(tuple(input_shape), n_classes, cfg)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model factory {cfg.factory or cfg.architecture!r} returned "
                        f"{type(model).__name__}, not a torch.nn.Module")
    return model


def recorded_layers(model: nn.Module, cfg: ModelConfig) -> list[str]:
    """The layer names or globs to record: `model.layers`, else the model's `recorded_layers`."""
    if cfg.layers:
        return list(cfg.layers)
    if hasattr(model, "recorded_layers"):
        return list(model.recorded_layers)
    raise ValueError("model.layers: name the modules to record (names or globs over "
                     "model.named_modules()); this model has no `recorded_layers` attribute")
