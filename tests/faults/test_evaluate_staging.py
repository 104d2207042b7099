"""evaluate's report folder is staged like the build: a failed evaluation leaves the previous report
byte for byte and no staging behind; a folder that is not a report is never replaced; a symlinked
--out is written where it points (was: written in place, a failure left a half-written report).

The default tests run the staging wrapper around a fast writer standing in for the computation
(:func:`cxr_tfp.evaluate._evaluate`); the slow test runs the real evaluation end to end."""
import errno
import json

import pytest

from cxr_tfp import evaluate as E
from tests.evalkit import StubAdapter, make_data
from tests.faults.test_atomic_build import leftovers, snapshot


def _fast_evaluate(model, data, out, **_kw):
    """Writes what an evaluation writes (metrics.json, report.md, a figure), then fails if asked."""
    from pathlib import Path

    out = Path(out)
    (out / "metrics.json").write_text(json.dumps({"model": model}))
    (out / "roc.png").write_bytes(b"png of " + model.encode())
    if model == "fails":
        raise OSError(errno.ENOSPC, "No space left on device")
    (out / "report.md").write_text(f"# {model}\n")
    return {"model": model}


@pytest.fixture()
def fast(monkeypatch):
    monkeypatch.setattr(E, "_evaluate", _fast_evaluate)


def test_a_failed_evaluation_leaves_the_previous_report(fast, tmp_path):
    out = tmp_path / "report"
    E.evaluate("first", "data", str(out))
    before = snapshot(out)
    with pytest.raises(OSError, match="No space left"):
        E.evaluate("fails", "data", str(out))
    assert snapshot(out) == before and leftovers(tmp_path) == []
    E.evaluate("second", "data", str(out))
    assert (out / "report.md").read_text() == "# second\n" and leftovers(tmp_path) == []


def test_a_folder_that_is_not_a_report_is_refused_and_a_symlink_kept(fast, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="refusing to replace .*thesis.tex"):
        E.evaluate("first", "data", str(mine))
    assert (mine / "thesis.tex").read_text() == "precious"
    link = tmp_path / "latest"
    link.symlink_to(tmp_path / "storage" / "report")
    for name in ("first", "second"):
        E.evaluate(name, "data", str(link))
        assert link.is_symlink() and (tmp_path / "storage" / "report" / "report.md").read_text() == f"# {name}\n"
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "storage") == []


@pytest.mark.slow  # two real evaluations (bootstrap, report) of the stand-in model
def test_a_real_evaluation_failing_at_its_report_keeps_the_previous_one(tmp_path, monkeypatch):
    import cxr_tfp.report.markdown as MDN

    data = make_data(tmp_path / "data")
    out = tmp_path / "report"

    def run(name):
        return E.evaluate(StubAdapter(name, 0.5, saliency=False), str(data), str(out),
                          options=E.EvalOptions(n_resamples=20), figures=False)

    run("s")
    before = snapshot(out)
    assert {"metrics.json", "report.md"} <= set(before)

    def full_disk(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MDN, "write_report", full_disk)
    with pytest.raises(OSError):
        run("another model")     # its metrics.json would differ from the first
    assert snapshot(out) == before and leftovers(tmp_path) == []
