"""Config dataclasses: YAML then CLI overrides, type checks, unknown keys with suggestions, saved config."""
from __future__ import annotations

import pytest
import yaml

from rtfer.errors import InputError
from rtfer.training.config import TrainConfig, config_from_dict, load_config, save_config


def test_defaults_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.01\n  sam: false\nrun:\n  epochs: 3\naugment:\n  scale: [0.5, 1.0]\n")
    cfg = load_config(path, ["optim.lr=2e-3", "run.epochs=5", "model.kwargs.drop_rate=0.3", "data.soft_targets=true"])
    assert cfg.optim.lr == pytest.approx(2e-3) and cfg.optim.sam is False
    assert cfg.run.epochs == 5 and cfg.augment.scale == (0.5, 1.0)
    assert cfg.model.kwargs == {"drop_rate": 0.3} and cfg.data.soft_targets is True
    assert cfg.optim.rho == TrainConfig().optim.rho  # untouched default


def test_unknown_key_suggests_close_match(tmp_path):
    with pytest.raises(InputError, match="did you mean 'optim.lr'"):
        load_config(None, ["optim.lrr=1"])
    path = tmp_path / "c.yaml"
    path.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(InputError, match="unknown config key 'trian'"):
        load_config(path)


def test_type_and_choice_errors():
    with pytest.raises(InputError, match="run.epochs"):
        load_config(None, ["run.epochs=abc"])
    with pytest.raises(InputError, match="optim.optimizer"):
        load_config(None, ["optim.optimizer=rmsprop"])
    with pytest.raises(InputError, match="key=value"):
        load_config(None, ["run.epochs"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.name=convnextv2_test", "augment.rotate=5", "model.kwargs.drop_rate=0.1"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load(path.read_text()))
    assert again == cfg


def test_shipped_configs_load():
    from pathlib import Path

    import rtfer.training

    folder = Path(rtfer.training.__file__).parent / "configs"
    names = sorted(p.name for p in folder.glob("*.yaml"))
    assert "ddamfn_rafdb.yaml" in names and "convnextv2_rafdb.yaml" in names
    ref = load_config(folder / "ddamfn_rafdb.yaml")
    assert (ref.optim.optimizer, ref.optim.lr, ref.optim.rho, ref.optim.gamma, ref.data.batch_size, ref.run.epochs) == \
        ("adam", 5e-4, 0.05, 0.9, 128, 40)
    cnx = load_config(folder / "convnextv2_rafdb.yaml")
    assert (cnx.model.name, cnx.model.input_size, cnx.model.kwargs["drop_rate"], cnx.optim.optimizer, cnx.optim.lr,
            cnx.optim.weight_decay, cnx.optim.scheduler, cnx.loss.label_smoothing, cnx.run.epochs) == \
        ("convnextv2_tiny", 224, 0.3, "adamw", 1e-4, 1e-3, "cosine", 0.1, 20)
    for p in folder.glob("*.yaml"):
        load_config(p)
