"""Config: defaults, YAML, overrides, unknown keys and impossible values, --help text."""
import dataclasses

import pytest
import yaml

from cxr_tfp.config import TrainConfig, load_config
from cxr_tfp.labels import NIH_FINDINGS, SYNTHETIC_FINDINGS


def test_defaults_follow_the_paper():
    cfg = TrainConfig()
    assert cfg.backbone == "densenet121" and cfg.freeze == "backbone"
    assert cfg.annotation == "gaze+boxes" and cfg.cache_features is True
    assert cfg.finding_names == NIH_FINDINGS


def test_round_trip_dict():
    cfg = TrainConfig(backbone="tiny", image_size=48, findings=["Mass", "Nodule"], beta=0.5)
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.finding_names == ("Mass", "Nodule")


@pytest.mark.parametrize("bad, word", [
    ({"nonsense_key": 1}, "nonsense_key"),
    ({"backbone": "vgg16"}, "backbone"),
    ({"latent_dim": 0}, "latent_dim"),
    ({"beta": -1.0}, "beta"),
    ({"stage1_lr": 0}, "stage1_lr"),
    ({"annotation": "eyes"}, "annotation"),
    ({"findings": "Not_A_Finding"}, "findings"),
    ({"batch_size": "many"}, "batch_size"),
    ({"cache_features": "maybe"}, "cache_features"),
])
def test_bad_values_are_named(bad, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig.from_dict(bad)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"backbone": "tiny", "image_size": 32, "beta": 2.0}))
    cfg = load_config(str(path), {"beta": "0.25", "cache-features": "false", "findings": "synthetic"})
    assert (cfg.backbone, cfg.image_size, cfg.beta, cfg.cache_features) == ("tiny", 32, 0.25, False)
    assert cfg.finding_names == SYNTHETIC_FINDINGS
    path.write_text("latent_dimm: 3\n")
    with pytest.raises(ValueError, match="latent_dimm"):
        load_config(str(path))


def test_shipped_configs_load():
    smoke = load_config("configs/smoke.yaml")
    assert (smoke.backbone, smoke.image_size, smoke.finding_names) == ("tiny", 64, SYNTHETIC_FINDINGS)
    assert load_config("configs/default.yaml") == TrainConfig(verbose=1)


def test_help_documents_every_option():
    from cxr_tfp.train import build_parser

    text = build_parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text
        assert f.metadata["help"].split()[0] in text
    args = build_parser().parse_args(["--data", "d", "--out", "o", "--stage2-epochs", "0",
                                      "--findings", "Mass,Nodule"])
    from cxr_tfp.config import overrides_from_args

    cfg = load_config(None, overrides_from_args(args))
    assert cfg.stage2_epochs == 0 and cfg.finding_names == ("Mass", "Nodule")
