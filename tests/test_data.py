import numpy as np
import pytest

from pipeline.archive import snapshot_epochs
from pipeline.config import ArchiveConfig, DataConfig
from pipeline.data import DataError, load_dataset, szt_patterns
from tests.helpers import SHARED

SZT_FILE = SHARED / "data" / "szt" / "var_u.mat"


def test_szt_label_statistics():
    x, y = szt_patterns()
    assert x.shape == (4096, 12) and y.sum() == 2118
    p = y.mean()
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    assert entropy == pytest.approx(0.9992, abs=1e-4)
    # binary counting order, column 0 the most significant bit
    assert x[1].tolist() == [0] * 11 + [1] and x[2048].tolist() == [1] + [0] * 11


@pytest.mark.skipif(not SZT_FILE.exists(), reason=f"original SZT file absent ({SZT_FILE})")
def test_szt_matches_original_file():
    from scipy.io import loadmat

    original = loadmat(SZT_FILE)
    x, y = szt_patterns()
    np.testing.assert_array_equal(original["F"], x)
    np.testing.assert_array_equal(original["y"].ravel(), y)


def test_szt_split_is_shuffled_and_complete():
    data = load_dataset(DataConfig(dataset="szt", train_fraction=0.8, split_seed=3))
    assert len(data.y_train) == 3277 and len(data.y_test) == 819
    both = np.concatenate([data.index_train, data.index_test])
    assert sorted(both.tolist()) == list(range(4096))
    assert data.index_test.max() - data.index_test.min() > 3000  # not the last 20%


def test_missing_mnist_files_give_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"MNIST/raw/.*data.download = true"):
        load_dataset(DataConfig(dataset="mnist", root=str(tmp_path)))


MNIST_RAW = SHARED / "data" / "MNIST" / "raw"


@pytest.mark.skipif(not (MNIST_RAW / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="MNIST test set absent from ../shared/data")
def test_mnist_test_split_can_serve_a_run():
    cfg = DataConfig(dataset="mnist", root=str(SHARED / "data"), source_split="test",
                     train_fraction=0.8, max_train=500, max_test=200)
    data = load_dataset(cfg)
    assert data.x_train.shape == (500, 1, 28, 28) and data.x_test.shape == (200, 1, 28, 28)
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert not set(data.index_train) & set(data.index_test)


def test_synthetic_images_shape():
    data = load_dataset(DataConfig(dataset="synthetic", synthetic_shape=(3, 32, 32),
                                   synthetic_samples=100))
    assert data.x_train.shape == (80, 3, 32, 32) and data.n_classes == 10


@pytest.mark.parametrize(
    "cfg, n_epochs, expected",
    [
        (ArchiveConfig(snapshots="every", every=3), 10, [0, 3, 6, 9, 10]),
        (ArchiveConfig(snapshots="list", epochs=(5, 0, 2)), 10, [0, 2, 5]),
        (ArchiveConfig(snapshots="log", n_log_points=400), 8000, None),
    ],
)
def test_snapshot_schedules(cfg, n_epochs, expected):
    epochs = snapshot_epochs(cfg, n_epochs)
    if expected is not None:
        assert epochs.tolist() == expected
    else:  # Shwartz-Ziv & Tishby: 274 snapshots for 8000 epochs, every epoch early on
        assert len(epochs) == 274 and epochs[:20].tolist() == list(range(20))
        assert epochs[-1] == 7999
