"""evaluate's report folder is staged like the build: a failed evaluation leaves the previous report
byte for byte and no staging behind; a folder that is not a report is never replaced; a symlinked
--out is written where it points (was: written in place, a failure left a half-written report)."""
import errno

import pytest

from cxr_tfp import evaluate as E
from tests.evalkit import StubAdapter, make_data
from tests.faults.test_atomic_build import leftovers, snapshot


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("evaldata"))


def _run(data, out, name="s"):
    return E.evaluate(StubAdapter(name, 0.5, saliency=False), str(data), str(out),
                      options=E.EvalOptions(n_resamples=20), figures=False)


def test_a_failed_evaluation_leaves_the_previous_report(data, tmp_path, monkeypatch):
    import cxr_tfp.report.markdown as MDN

    out = tmp_path / "report"
    _run(data, out)
    before = snapshot(out)
    assert {"metrics.json", "report.md"} <= set(before)

    def full_disk(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MDN, "write_report", full_disk)
    with pytest.raises(OSError):
        _run(data, out, name="another model")     # its metrics.json would differ from the first
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_a_folder_that_is_not_a_report_is_refused_and_a_symlink_kept(data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="refusing to replace .*thesis.tex"):
        _run(data, mine)
    assert (mine / "thesis.tex").read_text() == "precious"
    link = tmp_path / "latest"
    link.symlink_to(tmp_path / "storage" / "report")
    for _ in range(2):
        _run(data, link)
        assert link.is_symlink() and (tmp_path / "storage" / "report" / "report.md").is_file()
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "storage") == []
