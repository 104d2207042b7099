"""Salted pseudonymous keys and patient-level splits."""
import pytest

from cxr_tfp import privacy as P
from cxr_tfp.features import SPLITS


def test_salt_precedence_option_then_env_then_default(monkeypatch):
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    monkeypatch.delenv(P.FILE_ENV_VAR, raising=False)
    assert P.get_salt() == P.DEFAULT_SALT
    monkeypatch.setenv(P.ENV_VAR, "site-secret")
    assert P.get_salt() == "site-secret"
    assert P.get_salt("cli-salt") == "cli-salt"


def test_salt_from_a_mounted_secret_file(monkeypatch, tmp_path):
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    secret = tmp_path / "salt"
    secret.write_text("mounted-secret\n")            # secret volumes often end with a newline
    monkeypatch.setenv(P.FILE_ENV_VAR, str(secret))
    assert P.get_salt() == "mounted-secret"
    assert P.salt_fingerprint() == P.salt_fingerprint("mounted-secret") != P.salt_fingerprint(P.DEFAULT_SALT)
    assert "mounted-secret" not in P.salt_fingerprint()
    monkeypatch.setenv(P.ENV_VAR, "env-wins")          # the variable beats the file
    assert P.get_salt() == "env-wins"
    monkeypatch.delenv(P.ENV_VAR)
    # a named secret that is missing or empty fails: never the public default in its place
    monkeypatch.setenv(P.FILE_ENV_VAR, str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="absent"):
        P.get_salt()
    (tmp_path / "empty").write_text("")
    monkeypatch.setenv(P.FILE_ENV_VAR, str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="empty"):
        P.get_salt()


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
