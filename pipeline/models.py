"""Networks whose layers are recorded under stable names.

    from pipeline.models import build_model
    model = build_model(cfg.model, input_shape=(12,), n_classes=2)
    logits, layers = model(x, record=True)   # layers: {"dense1": ..., ..., "softmax": ...}

Names: MLP `dense1..denseK` then `softmax`; MNIST CNN `conv1..conv3`, `dense1`, `softmax`;
VGG-16 `conv1..conv13`, `dense1`, `dense2`, `softmax` (16 layers, as in Wickstrom et al.).
Convolutional layers keep their C x H x W shape. `layer_parameters` maps each recorded layer to
the parameters that produce it (for gradient statistics and Fisher information).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.config import ModelConfig

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


class RecordingNetwork(nn.Module):
    """A sequence of named blocks; `forward(x, record=True)` also returns each block's output."""

    blocks: nn.ModuleDict
    layer_names: list[str]

    def forward(self, x: torch.Tensor, record: bool = False):
        layers = {}
        h = x
        for name, block in self.blocks.items():
            h = block(h)
            if record and name != self.logits_block:
                layers[name] = h
        if record:
            layers["softmax"] = torch.softmax(h, dim=1)
            return h, layers
        return h

    def layer_parameters(self) -> dict[str, list[str]]:
        """Recorded layer name -> names of the parameters of the block that produces it."""
        out = {}
        for name in self.blocks:
            key = "softmax" if name == self.logits_block else name
            out[key] = [f"blocks.{name}.{p}" for p, _ in self.blocks[name].named_parameters()]
        return out

    @property
    def logits_block(self) -> str:
        return list(self.blocks)[-1]


def state_arrays(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and floating-point buffers (BatchNorm statistics), in state-dict order."""
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def _truncated_normal_(linear: nn.Linear) -> None:
    std = 1.0 / math.sqrt(linear.in_features)
    nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(linear.bias)


class MLP(RecordingNetwork):
    def __init__(self, in_features: int, cfg: ModelConfig, n_classes: int):
        super().__init__()
        blocks = {}
        sizes = [in_features, *cfg.widths]
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
            blocks[f"dense{i}"] = nn.Sequential(
                nn.Flatten(), nn.Linear(a, b), ACTIVATIONS[cfg.activation](),
                NoisyActivation(cfg.noise_std, cfg.noise_mode),
            )
        blocks["logits"] = nn.Sequential(nn.Linear(sizes[-1], n_classes))
        self.blocks = nn.ModuleDict(blocks)
        self.layer_names = [*list(blocks)[:-1], "softmax"]
        if cfg.init == "truncated_normal":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    _truncated_normal_(m)


class MnistCNN(RecordingNetwork):
    """Butakov et al.: 3 x (Conv 3x3, MaxPool 2, LeakyReLU), Linear(32, 32), Linear(32, 10)."""

    def __init__(self, in_channels: int, cfg: ModelConfig, n_classes: int):
        super().__init__()
        channels = [in_channels, 8, 16, 32]
        blocks = {}
        for i in range(3):
            blocks[f"conv{i + 1}"] = nn.Sequential(
                nn.Conv2d(channels[i], channels[i + 1], 3), nn.MaxPool2d(2), nn.LeakyReLU(),
                NoisyActivation(cfg.noise_std, cfg.noise_mode),
            )
        blocks["dense1"] = nn.Sequential(
            nn.Flatten(), nn.Linear(32, 32), nn.LeakyReLU(),
            NoisyActivation(cfg.noise_std, cfg.noise_mode),
        )
        blocks["logits"] = nn.Sequential(nn.Linear(32, n_classes))
        self.blocks = nn.ModuleDict(blocks)
        self.layer_names = ["conv1", "conv2", "conv3", "dense1", "softmax"]


class VGG16(RecordingNetwork):
    """VGG-16 with batch norm for 32x32 inputs: torchvision's feature extractor, 512-512-10 head."""

    def __init__(self, in_channels: int, cfg: ModelConfig, n_classes: int):
        super().__init__()
        from torchvision.models import vgg16_bn

        features = vgg16_bn(weights=None).features
        if in_channels != 3:
            features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        # Regroup torchvision's flat feature list into one block per conv (conv, bn, relu[, pool])
        # so each conv layer is recorded after its non-linearity, before pooling.
        blocks, current, n_conv = {}, [], 0
        for module in features:
            if isinstance(module, nn.MaxPool2d):
                blocks[f"conv{n_conv}"] = nn.Sequential(*blocks[f"conv{n_conv}"], module)
                continue
            current.append(module)
            if isinstance(module, nn.ReLU):
                n_conv += 1
                blocks[f"conv{n_conv}"] = nn.Sequential(*current)
                current = []
        # Record conv outputs before the pool: split the pool off into the next block instead.
        names = list(blocks)
        for i, name in enumerate(names):
            seq = list(blocks[name])
            if isinstance(seq[-1], nn.MaxPool2d) and i + 1 < len(names):
                blocks[name] = nn.Sequential(*seq[:-1])
                blocks[names[i + 1]] = nn.Sequential(seq[-1], *blocks[names[i + 1]])
        last_pool = list(blocks[names[-1]])[-1]
        blocks[names[-1]] = nn.Sequential(*list(blocks[names[-1]])[:-1])
        blocks["dense1"] = nn.Sequential(last_pool, nn.Flatten(), nn.Linear(512, 512), nn.ReLU())
        blocks["dense2"] = nn.Sequential(nn.Linear(512, 512), nn.ReLU())
        blocks["logits"] = nn.Sequential(nn.Linear(512, n_classes))
        self.blocks = nn.ModuleDict(blocks)
        self.layer_names = [*list(blocks)[:-1], "softmax"]


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> RecordingNetwork:
    """Instantiate the network of `cfg` for inputs of `input_shape` (without the batch axis)."""
    if cfg.architecture == "mlp":
        return MLP(math.prod(input_shape), cfg, n_classes)
    if len(input_shape) != 3:
        raise ValueError(f"{cfg.architecture} needs image inputs (C, H, W), got {input_shape}")
    if cfg.architecture == "mnist_cnn":
        if input_shape[1:] != (28, 28):
            raise ValueError(f"mnist_cnn expects 28x28 inputs, got {input_shape}")
        return MnistCNN(input_shape[0], cfg, n_classes)
    if input_shape[1:] != (32, 32):
        raise ValueError(f"vgg16 expects 32x32 inputs, got {input_shape}")
    return VGG16(input_shape[0], cfg, n_classes)
