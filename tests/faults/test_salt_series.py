"""A pipeline run whose salt differs from the earlier spans' is refused by default, naming both
fingerprints; CXR_TFP_NEW_SALT_SERIES=1 starts a new series deliberately (was: the new span was built
with the new salt, so patients changed split between spans and their keys no longer joined)."""
import json

import pytest

from pipeline.example_gen import NEW_SALT_SERIES_ENV, check_salt_series, earlier_salt_fingerprint


def _artifact(base, execution_id, fingerprint, status="ok"):
    d = base / str(execution_id)
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"status": status, "salt_fingerprint": fingerprint}))
    return d


def test_a_changed_salt_is_refused_naming_both_fingerprints(tmp_path, monkeypatch):
    monkeypatch.delenv(NEW_SALT_SERIES_ENV, raising=False)
    base = tmp_path / "ChestXrayExampleGen" / "examples"
    assert check_salt_series(str(base / "3"), "aaaaaaaaaaaa") == "first"
    _artifact(base, 3, "aaaaaaaaaaaa")
    _artifact(base, 5, "bbbbbbbbbbbb", status="failed")     # a failed run does not set the series
    assert check_salt_series(str(base / "7"), "aaaaaaaaaaaa") == "same"
    with pytest.raises(ValueError) as err:
        check_salt_series(str(base / "7"), "cccccccccccc")
    msg = str(err.value)
    assert "fingerprint cccccccccccc" in msg and "fingerprint aaaaaaaaaaaa" in msg
    assert f"{NEW_SALT_SERIES_ENV}=1" in msg and "\n" not in msg


def test_a_new_series_is_started_deliberately_and_then_kept(tmp_path, monkeypatch):
    base = tmp_path / "examples"
    _artifact(base, 3, "aaaaaaaaaaaa")
    monkeypatch.setenv(NEW_SALT_SERIES_ENV, "1")
    assert check_salt_series(str(base / "7"), "cccccccccccc") == "new"
    _artifact(base, 7, "cccccccccccc")
    monkeypatch.delenv(NEW_SALT_SERIES_ENV)
    assert earlier_salt_fingerprint(str(base / "9"))["fingerprint"] == "cccccccccccc"
    assert check_salt_series(str(base / "9"), "cccccccccccc") == "same"
    with pytest.raises(ValueError, match="earlier spans were built with fingerprint cccccccccccc"):
        check_salt_series(str(base / "9"), "aaaaaaaaaaaa")
