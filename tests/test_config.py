import pytest

from pipeline.config import ConfigError, load_config
from tests.helpers import ROOT, TINY

CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert cfg.seeds


def test_required_configs_are_shipped():
    names = {p.stem for p in CONFIGS}
    assert {"szt_tanh", "szt_tanh_paper", "szt_relu", "mnist_mlp", "mnist_cnn", "cifar10_vgg16",
            "tiny"} <= names


@pytest.mark.parametrize(
    "text, message",
    [
        ('name = "x"\n[train]\nn_epoch = 3\n', "train.n_epoch: unknown key"),
        ('name = "x"\nbogus = 1\n', "bogus: unknown key"),
        ('name = "x"\n[train]\nn_epochs = "ten"\n', "train.n_epochs: expected an integer"),
        ('name = "x"\n[train]\nn_epochs = 1.5\n', "train.n_epochs: expected an integer"),
        ('name = "x"\n[model]\nactivation = "sigmoid"\n', "model.activation: 'sigmoid' is not one of"),
        ('name = "x"\n[model]\nwidths = [3, "a"]\n', "model.widths[1]: expected an integer"),
        ('name = "x"\n[archive]\nstore_weights = 1\n', "archive.store_weights: expected true or false"),
        ('[train]\nn_epochs = 3\n', "name: required key is missing"),
        ('name = "x"\nseeds = []\n', "seeds: give at least one seed"),
        ('name = "x"\nseeds = [0, -1]\n', "seeds: must be whole numbers >= 0, got -1"),
        ('name = "x"\n[archive]\nsnapshots = "list"\n', "archive.epochs: required"),
        ('name = "x"\n[estimators.a]\nbins = 3\n', "estimators.a.method: required"),
        ('name = "x"\n[train\n', "not valid TOML"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.toml")


def test_overrides_parse_toml_values():
    cfg = load_config(TINY, ["train.n_epochs=11", "seeds=[3, 4]", "model.activation=relu",
                             "train.lr=1e-3", "name=other"])
    assert cfg.train.n_epochs == 11 and cfg.seeds == (3, 4)
    assert cfg.model.activation == "relu" and cfg.train.lr == 1e-3 and cfg.name == "other"


def test_override_unknown_key_rejected():
    with pytest.raises(ConfigError, match="train.epochs: unknown key"):
        load_config(TINY, ["train.epochs=3"])


def test_config_is_frozen_and_hash_ignores_estimators_and_parallelism():
    a = load_config(TINY)
    with pytest.raises(AttributeError):
        a.name = "b"  # type: ignore[misc]
    b = load_config(TINY, ["train.parallel_seeds=1", "estimators.x.method=binning"])
    c = load_config(TINY, ["train.lr=0.5"])
    d = load_config(TINY, ["seeds=[7]"])
    assert a.training_hash() == b.training_hash() == d.training_hash() != c.training_hash()


def test_set_overrides_apply_to_the_default_entries_of_an_archive_run():
    """`--archive A --set estimators.kde_upper.noise_variance=0.01` without `--config`: the
    override changes that default entry (it used to be dropped in silence)."""
    from pipeline.config import ConfigError
    from pipeline.estimate import DEFAULT_ESTIMATORS, archive_settings

    assert archive_settings(None, []) is None
    settings = archive_settings(None, ["estimators.kde_upper.noise_variance=0.01", "estimate.splits=['all']"])
    assert settings.estimators["kde_upper"]["noise_variance"] == 0.01 and settings.estimate.splits == ("all",)
    assert {k: v for k, v in settings.estimators.items() if k != "kde_upper"} == \
        {k: v for k, v in DEFAULT_ESTIMATORS.items() if k != "kde_upper"}
    assert DEFAULT_ESTIMATORS["kde_upper"].get("noise_variance") != 0.01  # the defaults left as they were
    with pytest.raises(ConfigError, match="unknown parameter"):
        archive_settings(None, ["estimators.kde_upper.noise_varianc=0.01"])



def test_a_sweep_is_one_plain_entry_per_combination_of_its_values(tmp_path):
    """`sweep = {parameter = [values]}` expands when the config loads: entries named by their
    values, in the order given, each validated as if written out; `--set` can write a sweep."""
    path = tmp_path / "sweep.toml"
    path.write_text(TINY.read_text() + '\n[estimators.kde]\nmethod = "kde"\nbound = "upper"\n'
                    'sweep = {noise_variance = [1e-3, 0.1], device = ["cpu"]}\n'
                    '[estimators.binning_30]\nmethod = "binning"\nn_bins = 30\n')
    cfg = load_config(path)
    assert list(cfg.estimators) == ["binning_10", "kde_upper", "renyi", "kde_noise_variance_0.001_device_cpu",
                                    "kde_noise_variance_0.1_device_cpu", "binning_30"]  # tiny's, then these
    assert cfg.estimators["kde_noise_variance_0.1_device_cpu"] == {"method": "kde", "bound": "upper",
                                                                   "noise_variance": 0.1, "device": "cpu"}
    assert list(load_config(TINY, ["estimators.b.method=binning", "estimators.b.sweep.n_bins=[10, 100]"])
                .estimators)[3:] == ["b_n_bins_10", "b_n_bins_100"]
    from pipeline.config import expand_sweeps  # the Python API's estimators= goes through the same
    from pipeline.estimate import archive_settings

    swept = archive_settings(None, ["estimators.kde_upper.sweep.noise_variance=[0.01, 1.0]"]).estimators
    assert swept["kde_upper_noise_variance_1.0"] == {"method": "kde", "noise_variance": 1.0, "bound": "upper"}
    assert "kde_upper" not in swept  # the sweep's values replace the default entry's own

    assert expand_sweeps({"u": {"method": "binning", "sweep": {"null": [True, False]}}}) == {
        "u_null_true": {"method": "binning", "null": True},
        "u_null_false": {"method": "binning", "null": False}}


@pytest.mark.parametrize(("table", "message"), [
    ("sweep = [10, 30]", "estimators.b.sweep: a table {parameter = [values]}"),
    ("sweep = {n_bins = 30}", "estimators.b.sweep.n_bins: a list of distinct values, got 30"),
    ("sweep = {n_bins = [30, 30]}", "estimators.b.sweep.n_bins: a list of distinct values"),
    ("sweep = {n_bins = [1, 10]}", "estimators.b_n_bins_1.n_bins: must be an integer >= 2, got 1"),
    ("sweep = {range = ['a b']}", "estimators.b.sweep: 'b_range_a b' is not a valid name"),
])
def test_a_sweep_that_cannot_expand_names_the_key(tmp_path, table, message):
    path = tmp_path / "sweep.toml"
    path.write_text(TINY.read_text() + f'\n[estimators.b]\nmethod = "binning"\n{table}\n')
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("{", r"\{")):
        load_config(path)
    path.write_text(TINY.read_text() + '\n[estimators.b]\nmethod = "binning"\nsweep = {n_bins = [10]}\n'
                    '[estimators.b_n_bins_10]\nmethod = "binning"\n')
    with pytest.raises(ConfigError, match="estimators.b.sweep: the entry 'b_n_bins_10' it makes is also"):
        load_config(path)
