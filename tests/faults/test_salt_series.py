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


@pytest.mark.slow  # two ExampleGen executor runs (Beam in-process, ~10 s each)
def test_the_executor_refuses_a_second_span_built_with_another_salt(tmp_path, monkeypatch):
    import os

    import pipeline  # noqa: F401  (Keras 3 pin before tfx)
    from cxr_tfp.datasets.synthetic import generate
    from cxr_tfp.privacy import ENV_VAR, FILE_ENV_VAR, salt_fingerprint
    from tests.pipeline.test_example_gen import _run_executor

    raw = tmp_path / "raw"
    for span in ("1", "2"):
        generate(raw / span, n_patients=6, image_size=32, seed=int(span))
    monkeypatch.delenv(FILE_ENV_VAR, raising=False)
    monkeypatch.delenv(NEW_SALT_SERIES_ENV, raising=False)
    monkeypatch.setenv(ENV_VAR, "salt-of-the-first-span")
    base = tmp_path / "pipeline_root" / "ChestXrayExampleGen" / "examples"
    _run_executor(str(raw), "1", str(base / "1"), tmp_path)
    monkeypatch.setenv(ENV_VAR, "another-salt")
    with pytest.raises(ValueError) as err:
        _run_executor(str(raw), "2", str(base / "2"), tmp_path)
    assert salt_fingerprint("another-salt") in str(err.value)
    assert salt_fingerprint("salt-of-the-first-span") in str(err.value)
    assert not os.path.exists(base / "2" / "Split-train")      # refused before anything was built
    monkeypatch.setenv(NEW_SALT_SERIES_ENV, "1")
    _run_executor(str(raw), "2", str(base / "2b"), tmp_path)
    summary = json.loads((base / "2b" / "summary.json").read_text())
    assert summary["salt_series"] == "new" and summary["salt_fingerprint"] == salt_fingerprint("another-salt")
