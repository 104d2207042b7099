"""The task model's shape: TrainConfig gives the defaults, get_config round-trips, compile owns the loss."""
import pytest

from cxr_tfp.config import TrainConfig
from cxr_tfp.model import CxrModel, build_model
from cxr_tfp.model.cxr_model import CONFIG_FIELDS, model_arguments


@pytest.fixture(scope="module")
def tiny():
    return CxrModel(backbone="tiny", image_size=32, findings="synthetic")


def test_unset_arguments_take_the_train_config_defaults(tiny):
    d = TrainConfig()
    cfg = tiny.get_config()
    for arg, field in CONFIG_FIELDS.items():
        if arg in ("backbone", "image_size", "findings", "weights"):
            continue
        assert cfg[arg] == getattr(d, field), arg
    assert (d.latent_dim, d.stage2_prior_bce, d.prior_kl) == (tiny.latent_dim, tiny.prior_bce, tiny.prior_kl)


def test_build_model_passes_every_mapped_field():
    cfg = TrainConfig(backbone="tiny", image_size=32, findings="synthetic", latent_dim=5, hidden_dim=7,
                      beta=0.3, stage2_prior_bce=0.25, prior_kl=0.5, num_samples=3, seed=4)
    args = model_arguments(cfg)
    assert args["prior_bce"] == 0.25 and args["findings"] == cfg.finding_names
    m = build_model(cfg)
    assert (m.latent_dim, m.hidden_dim, m.beta, m.prior_bce, m.prior_kl, m.num_samples, m.seed) == \
        (5, 7, 0.3, 0.25, 0.5, 3, 4)


def test_get_config_round_trips(tiny):
    tiny.set_thresholds({"Mass": 0.25})
    again = CxrModel.from_config(tiny.get_config())
    assert again.get_config() == tiny.get_config()
    assert again.thresholds["Mass"] == 0.25


def test_compile_owns_the_loss_and_takes_pos_weight(tiny):
    with pytest.raises(ValueError, match="own loss"):
        tiny.compile(optimizer="adam", loss="binary_crossentropy")
    with pytest.raises(ValueError, match="pos_weight has 1 values"):
        tiny.compile(optimizer="adam", pos_weight=[2.0])
    tiny.compile(optimizer="adam", pos_weight=[2.0] * len(tiny.findings))
    assert tiny.pos_weight == [2.0] * len(tiny.findings)
    assert CxrModel.from_config(tiny.get_config()).pos_weight == tiny.pos_weight


def test_thresholds_are_checked(tiny):
    with pytest.raises(ValueError, match="does not predict"):
        tiny.set_thresholds({"Hernia-typo": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny.set_thresholds({"Mass": 1.5})
