"""Salted pseudonymous keys and patient-level splits."""
import pytest

from cxr_tfp import privacy as P
from cxr_tfp.features import SPLITS


def test_salt_precedence_option_then_env_then_default(monkeypatch):
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    assert P.get_salt() == P.DEFAULT_SALT
    monkeypatch.setenv(P.ENV_VAR, "site-secret")
    assert P.get_salt() == "site-secret"
    assert P.get_salt("cli-salt") == "cli-salt"


def test_keys_are_deterministic_salted_namespaced_and_hide_the_id(monkeypatch):
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    k = P.patient_key("00012345", "nih")
    assert k == P.patient_key("00012345", "nih")
    assert "12345" not in k and len(k) == P.KEY_HEX_CHARS
    assert k != P.patient_key("00012345", "nih", salt="other")
    assert k != P.patient_key("00012345", "mimic")
    assert k != P.example_key("00012345", "nih")
    monkeypatch.setenv(P.ENV_VAR, "other")
    assert P.patient_key("00012345", "nih") == P.patient_key("00012345", "nih", salt="other")


def test_empty_identifier_is_refused():
    with pytest.raises(ValueError):
        P.patient_key("  ", "nih")


def test_split_is_a_pure_function_of_the_patient_and_follows_the_fractions():
    ids = [str(i) for i in range(4000)]
    splits = [P.assign_split(i, "nih") for i in ids]
    assert splits == [P.assign_split(i, "nih") for i in ids]
    frac = {s: splits.count(s) / len(ids) for s in SPLITS}
    assert abs(frac["train"] - 0.8) < 0.03 and abs(frac["eval"] - 0.1) < 0.02 and abs(frac["test"] - 0.1) < 0.02
    assert {P.assign_split(i, "nih", fractions="1,0,0") for i in ids[:50]} == {"train"}
    assert [P.assign_split(i, "nih", salt="x") for i in ids] != splits


def test_train_eval_split_for_officially_trainval_patients():
    got = {P.assign_train_eval(str(i), "nih") for i in range(500)}
    assert got == {"train", "eval"}


def test_parse_fractions():
    assert P.parse_fractions("8,1,1") == pytest.approx((0.8, 0.1, 0.1))
    with pytest.raises(ValueError):
        P.parse_fractions("0.5,0.5")
    with pytest.raises(ValueError):
        P.parse_fractions("a,b,c")


def test_redact_removes_identifiers():
    assert P.redact("cannot open /data/p10000032/x.jpg", ["p10000032", None]) == "cannot open /data/<redacted>/x.jpg"
