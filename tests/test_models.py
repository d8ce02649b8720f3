import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.models import build_model, state_arrays

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
    logits, layers = model(torch.rand(3, *shape), record=True)
    assert list(layers) == names == model.layer_names
    for name, expected in shapes.items():
        assert tuple(layers[name].shape[1:]) == expected
    torch.testing.assert_close(layers["softmax"], torch.softmax(logits, 1))
    assert set(model.layer_parameters()) == set(names)
    # every parameter belongs to exactly one recorded layer
    owned = [p for ps in model.layer_parameters().values() for p in ps]
    assert sorted(owned) == sorted(dict(model.named_parameters()))
    assert set(dict(model.named_parameters())) <= set(state_arrays(model))


@pytest.mark.parametrize("activation", ["tanh", "relu", "linear", "softsign"])
def test_mlp_activations(activation):
    model = build_model(ModelConfig(activation=activation, widths=(4,)), (12,), 2)
    _, layers = model(torch.randn(50, 12) * 5, record=True)
    h = layers["dense1"]
    if activation == "tanh":
        assert h.abs().max() <= 1
    elif activation == "relu":
        assert h.min() >= 0 and h.max() > 1  # never clipped
    elif activation == "softsign":
        assert h.abs().max() < 1


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
