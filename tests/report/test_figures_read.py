"""Report figures a radiologist can read (issue 20 point 2): colour bars, flat maps without a peak,
n+ in PR titles, legends off the curves, examples that are what the text says."""
from types import SimpleNamespace

import numpy as np
import pytest

from cxr_tfp.report import figures as FIG
from cxr_tfp.report.saliency import SaliencyCollector, SaliencyExample


@pytest.fixture
def captured(monkeypatch):
    """The figure each drawing function builds, kept open for inspection instead of saved."""
    figs = []

    def keep(fig, path, title):
        fig.suptitle(title)
        fig.canvas.draw()
        figs.append(fig)
        return path

    monkeypatch.setattr(FIG, "_save", keep)
    yield figs
    import matplotlib.pyplot as plt

    for f in figs:
        plt.close(f)


def _example(maps, annotated=True):
    boxes = np.zeros((16, 16))
    boxes[4:8, 4:8] = 1
    return SaliencyExample(image=np.full((16, 16), 0.5), saliency=next(iter(maps.values())), gaze=None,
                           boxes=boxes if annotated else None, finding="Nodule", probability=0.56,
                           label=1.0, annotated=annotated, maps=maps)


def _x_markers(ax):
    return [ln for ln in ax.get_lines() if ln.get_marker() == "x"]


def test_a_flat_map_is_marked_flat_without_a_peak_and_every_map_has_a_colour_bar(captured, tmp_path):
    peaked = np.zeros((16, 16))
    peaked[10, 12] = 1.0
    FIG.saliency_figure([_example({"gradcam": np.zeros((16, 16)), "occlusion": peaked})], "m",
                        tmp_path / "s.png", per_row=1)
    fig = captured[0]
    grad, occl = [ax for ax in fig.axes if ax.get_title().startswith(("Grad", "gradcam", "occl"))]
    assert "FLAT" in grad.get_title() and not _x_markers(grad)
    assert "FLAT" not in occl.get_title()
    (mark,) = _x_markers(occl)
    assert (mark.get_xdata()[0], mark.get_ydata()[0]) == (12, 10)
    colour_bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colour_bars) == 2
    assert all(cb.get_ylim() == (0.0, 1.0) for cb in colour_bars)   # one 0..1 scale per method


def test_is_flat():
    assert FIG.is_flat(np.zeros((4, 4))) and FIG.is_flat(np.full((4, 4), 0.7))
    assert not FIG.is_flat(np.eye(4))


def _pred(findings, labels, probs):
    labels, probs = np.asarray(labels, float), np.asarray(probs, float)
    return SimpleNamespace(findings=findings, labels=labels, probs=probs, mask=np.ones_like(labels))


def test_pr_panels_carry_n_pos_and_legends_never_cover_the_axes(captured, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 2))
    labels[:2, 0] = 1      # a low-prevalence finding: its curve hugs the lower left
    labels[:15, 1] = 1
    pred = _pred(["Hernia", "Effusion"], labels, rng.random((40, 2)))
    FIG.pr_figure([pred], ["A"], ["Hernia", "Effusion"], tmp_path / "pr.png")
    FIG.roc_figure([pred], ["A"], ["Hernia", "Effusion"], tmp_path / "roc.png")
    for fig in captured:
        panels = [ax for ax in fig.axes if ax.get_title()]
        assert {ax.get_title() for ax in panels} == {"Hernia (n+=2)", "Effusion (n+=15)"}
        renderer = fig.canvas.get_renderer()
        for ax in panels:
            leg = ax.get_legend()
            assert leg is not None
            assert leg.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0 + 1


def test_referral_legend_sits_outside_the_axes(captured, tmp_path):
    per = {f: {"referral": [{"fraction": fr, "auroc": 0.6 + fr} for fr in (0.0, 0.1, 0.2)]} for f in "abcdef"}
    res = {"per_finding": per, "referral": {"fractions": [0.0, 0.1, 0.2],
                                            "macro_auroc": [{"fraction": fr, "auroc": 0.6 + fr} for fr in (0.0, 0.1, 0.2)]}}
    FIG.referral_figure([res], ["A"], tmp_path / "r.png")
    fig = captured[0]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1 - 1


def test_examples_are_the_annotated_images_and_otherwise_say_what_is_shown():
    col = SaliencyCollector.__new__(SaliencyCollector)
    col.n_examples = 6
    col._annotated, col._filler = [_example({"gradcam": np.eye(16)})], [_example({"gradcam": np.eye(16)}, False)] * 3
    assert [e.annotated for e in col.examples] == [True]           # no unannotated filler beside them
    assert col.examples_shown() == {"annotated": 1, "unannotated": 0}
    col._annotated = []
    assert col.examples_shown() == {"annotated": 0, "unannotated": 3}
    assert FIG.examples_note({"annotated": 0, "unannotated": 3}).startswith(
        "No annotated image with a known positive in this split: shown instead, 3 unannotated")
    assert "annotated image(s), each with the known-positive finding" in FIG.examples_note({"annotated": 2})
