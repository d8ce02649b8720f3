import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.models import build_model, state_arrays
from pipeline.record import capture, layer_layout

CASES = [
    ("mlp", (12,), ["dense1", "dense2", "dense3", "dense4", "dense5", "softmax"],
     {"dense1": (10,), "dense5": (3,), "softmax": (2,)}),
    ("mnist_cnn", (1, 28, 28), ["conv1", "conv2", "conv3", "dense1", "softmax"],
     {"conv1": (8, 13, 13), "conv2": (16, 5, 5), "conv3": (32, 1, 1), "dense1": (32,)}),
    ("vgg16", (3, 32, 32), [f"conv{i}" for i in range(1, 14)] + ["dense1", "dense2", "softmax"],
     {"conv1": (64, 32, 32), "conv3": (128, 16, 16), "conv13": (512, 2, 2), "dense2": (512,)}),
]


@pytest.mark.parametrize("architecture, shape, names, shapes", CASES, ids=[c[0] for c in CASES])
def test_recorded_layers(architecture, shape, names, shapes):
    n_classes = 2 if architecture == "mlp" else 10
    model = build_model(ModelConfig(architecture=architecture), shape, n_classes)
    assert model.recorded_layers == names
    x = torch.rand(3, *shape)
    layers = capture(model, x, names)
    assert list(layers) == names
    for name, expected in shapes.items():
        assert layers[name].shape[1:] == expected
    model.eval()
    torch.testing.assert_close(torch.from_numpy(layers["softmax"]), torch.softmax(model(x), 1))
    layout = {spec.name: spec.parameters for spec in layer_layout(model, names, x)}
    # every parameter belongs to exactly one recorded layer; the probabilities own the logits'
    owned = [p for ps in layout.values() for p in ps]
    assert sorted(owned) == sorted(dict(model.named_parameters()))
    assert all(p.startswith("logits.") for p in layout["softmax"])
    assert set(dict(model.named_parameters())) <= set(state_arrays(model))


@pytest.mark.parametrize("activation", ["tanh", "relu", "linear", "softsign"])
def test_mlp_activations(activation):
    model = build_model(ModelConfig(activation=activation, widths=(4,)), (12,), 2)
    x = torch.randn(50, 12) * 5
    h = capture(model, x, ["dense1"])["dense1"]
    with torch.no_grad():
        pre = model.dense1[1](x).numpy()  # the layer's affine map, before its non-linearity
    expected = {"tanh": torch.tanh, "relu": torch.relu, "linear": lambda v: v,
                "softsign": torch.nn.functional.softsign}[activation](torch.from_numpy(pre))
    torch.testing.assert_close(torch.from_numpy(h), expected)
    if activation == "relu":
        assert h.max() > 1  # never clipped


def test_noise_only_in_training_mode():
    model = build_model(ModelConfig(noise_std=0.1, noise_mode="absolute", widths=(4,)), (12,), 2)
    x = torch.randn(5, 12)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_images_of_the_wrong_size_are_refused():
    with pytest.raises(ValueError, match="expects 28x28"):
        build_model(ModelConfig(architecture="mnist_cnn"), (1, 32, 32), 10)


@pytest.mark.parametrize("kind", ["model", "dataset"])
def test_a_builtin_model_or_dataset_name_cannot_be_registered_over(kind):
    from pipeline.data import DATASETS
    from pipeline.models import MODELS
    from pipeline.registry import RegistryError

    registry = MODELS if kind == "model" else DATASETS
    builtin = {"model": ["mlp", "mnist_cnn", "vgg16"],
               "dataset": ["szt", "synthetic", "mnist", "cifar10"]}[kind]
    original = {name: registry.get(name) for name in builtin}
    for name in builtin:
        with pytest.raises(RegistryError, match=f"{kind} name '{name}' is a built-in one"):
            registry.register(name)(lambda *args: None)
        assert registry.get(name) is original[name]
    own = f"test_own_{kind}"
    try:  # an own name may be registered again (a notebook cell run twice)
        registry.register(own)(len)
        registry.register(own)(abs)
        assert registry.get(own) is abs
    finally:
        registry._items.pop(own, None)
