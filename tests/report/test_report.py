"""Report layer on arrays: figures are written and readable, the markdown reads from the metrics dict."""
import re

import numpy as np
import pytest

from cxr_tfp import evaluate as E
from cxr_tfp.report import figures as FIG
from cxr_tfp.report import markdown as MD
from cxr_tfp.report.saliency import SaliencyExample

FINDS = ("Effusion", "Mass", "Nodule")


def _pred(seed=0, strength=0.5, with_examples=True) -> E.Predictions:
    rng = np.random.default_rng(seed)
    n = 40
    labels = (rng.random((n, 3)) < 0.4).astype(float)
    labels[:, 2] = 0.0                                 # Nodule: no positives
    labels[:, 1] = np.where(np.arange(n) < 30, 1.0, labels[:, 1])
    mask = np.ones_like(labels)
    mask[30:, 1] = 0.0                                 # Mass: only positives known -> no negatives
    noise = np.random.default_rng(99).random((n, 3))
    probs = np.clip(strength * labels + (1 - strength) * noise, 0, 1)
    examples = []
    if with_examples:
        img = rng.random((16, 16))
        sal = np.zeros((16, 16))
        sal[4, 5] = 1
        boxes = np.zeros((16, 16))
        boxes[2:8, 3:9] = 1
        examples = [SaliencyExample(image=img, saliency=sal, gaze=sal, boxes=boxes, finding="Effusion",
                                      probability=0.8, label=1.0, annotated=True),
                    SaliencyExample(image=img, saliency=sal, gaze=None, boxes=None, finding="Mass",
                                      probability=0.3, label=None, annotated=False)]
    agreement = [{"type": "boxes", "finding": "Effusion", "hit": True, "precision": 0.5, "iou": 0.25, "chance": 0.1},
                 {"type": "boxes", "finding": "Effusion", "hit": False, "precision": 0.0, "iou": 0.0, "chance": 0.1}]
    return E.Predictions(findings=FINDS, probs=probs, uncertainty=np.abs(noise - 0.5), labels=labels, mask=mask,
                         patient_keys=np.array([f"p{i // 2}" for i in range(n)]),
                         example_keys=np.array([f"e{i}" for i in range(n)]),
                         has_gaze=np.zeros(n, bool), has_boxes=np.arange(n) < 2, agreement=agreement,
                         examples=examples)


def _result(preds, names=("A", "B")):
    opts = E.EvalOptions(n_resamples=50)
    models = []
    for p, name in zip(preds, names):
        m = E.compute_metrics(p, {f: 0.5 for f in FINDS}, opts)
        m.update({"name": name, "path": f"/models/{name}", "kind": "keras"})
        models.append(m)
    res = {"split": "test", "data": "/d", "threshold": {"method": "youden", "split": "eval", "target_sensitivity": None,
                                                        "fixed": None, "note": None},
           "bootstrap": {"n_resamples": 50, "seed": 0, "alpha": 0.05, "unit": "patient"},
           "calibration_bins": 10, "models": models, "comparison": None}
    if len(preds) == 2:
        res["comparison"] = {"a": names[0], "b": names[1], **E.compare_metrics(preds[0], preds[1], opts)}
    return res


def test_compute_metrics_undefined_reasons():
    res = _result([_pred()], names=("A",))
    per = res["models"][0]["per_finding"]
    assert per["Nodule"]["auroc"] is None and per["Nodule"]["positives"] == 0
    assert per["Mass"]["auroc"] is None and per["Mass"]["negatives"] == 0 and per["Mass"]["positives"] == 30
    assert per["Mass"]["unknown"] == 10
    assert res["models"][0]["macro"]["findings_defined"] == 1
    assert res["models"][0]["macro"]["auroc"] == pytest.approx(per["Effusion"]["auroc"])
    sal = res["models"][0]["saliency"]["boxes"]
    assert sal["n"] == 2 and sal["pointing_hit_rate"] == 0.5 and sal["topk_precision"] == pytest.approx(0.25)
    assert res["models"][0]["saliency"]["gaze"]["pointing_hit_rate"] is None


def test_report_text_reads_undefined_as_na_and_summary_first():
    res = _result([_pred(0, 0.3), _pred(0, 0.7)])
    text = MD.render(res)
    assert text.index("## Summary") < text.index("## Per-finding detail") < text.index("## Calibration")
    nodule = next(l for l in text.splitlines() if l.startswith("| Nodule |"))
    mass = next(l for l in text.splitlines() if l.startswith("| Mass |"))
    assert "n/a (no positives)" in nodule and "n/a (no negatives)" in mass
    assert "nan" not in text.lower() and "None" not in text
    # the numbers printed are the dict's numbers
    m = res["models"][0]
    assert f"{m['macro']['auroc']:.3f} ({m['macro']['ci_low']:.3f}-{m['macro']['ci_high']:.3f})" in text
    c = res["comparison"]
    assert f"**{c['difference']:+.3f}**" in text


def test_figures_exist_and_are_linked(tmp_path):
    from PIL import Image

    preds = [_pred(0, 0.3), _pred(0, 0.7)]
    res = _result(preds)
    figs = FIG.draw_all(preds, res, tmp_path)
    res["figures"] = figs
    MD.write_report(res, tmp_path / "report.md")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (tmp_path / "report.md").read_text())
    drawn = {figs[k] for k in ("roc", "pr", "reliability", "referral", "saliency_agreement")} | set(figs["saliency_examples"])
    assert set(links) == drawn
    for name in links:
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and np.asarray(im.convert("L")).std() > 5


def test_saliency_figure_without_examples(tmp_path):
    p = FIG.saliency_figure([], "empty", tmp_path / "s.png")
    assert p.is_file()
    assert FIG.agreement_figure([{"saliency": {"available": False}}], ["x"], tmp_path / "a.png") is None
    assert not (tmp_path / "a.png").exists()


def test_formatting_helpers():
    assert MD.fmt(None) == "n/a" and MD.fmt(0.12345) == "0.123"
    assert MD.with_ci(0.8, 0.7, 0.9) == "0.800 (0.700-0.900)"
    assert MD.with_ci(None, None, None, "n/a (no positives)") == "n/a (no positives)"
    assert MD.pct(0.5) == "50.0%"


def test_report_states_its_limits():
    """Images and patients per figure, intervals on the headline numbers, a warning under 10 positives."""
    pred = _pred(0, 0.6)
    pred.labels[:, 0] = 0.0
    pred.labels[:4, 0] = 1.0                       # Effusion: 4 positives
    res = _result([pred], names=("A",))
    m = res["models"][0]
    assert m["few_positives"]["findings"] == ["Effusion"] and m["few_positives"]["min_positives"] == 10
    text = MD.render(res)
    assert "**Warning (A): fewer than 10 positives** for Effusion (4)" in text
    assert "| Effusion (warning: few positives) |" in text
    assert text.count(f"{m['n_images']} images from {m['n_patients']} patients") >= 4   # summary + figures
    mac = m["macro"]
    for key in ("average_precision", "ece", "sensitivity", "specificity"):
        lo, hi = mac[f"{key}_ci_low"], mac[f"{key}_ci_high"]
        assert lo is not None and lo <= mac[key] + 1e-9 and mac[key] <= hi + 1e-9
        assert f"{mac[key]:.3f} ({lo:.3f}-{hi:.3f})" in text
    sal = m["saliency"]["boxes"]
    assert sal["n_patients"] == 2 and sal["hit_ci_low"] < 0.5 < sal["hit_ci_high"]
    assert "1/2 = 50.0% (" in text and "| 2 / 2 |" in text   # records without a patient: one each


def test_agreement_per_method_with_intervals():
    from cxr_tfp.report.saliency import agreement_summary

    recs = [{"type": "boxes", "finding": "Mass", "hit": i % 2 == 0, "precision": 0.1 * i, "iou": 0.0,
             "chance": 0.1, "method": meth, "patient": f"p{i // 2}"} for meth in ("gradcam", "occlusion")
            for i in range(6)]
    recs[0]["hit"] = False                          # gradcam: 2/6 hits, occlusion: 3/6
    s = agreement_summary(recs, 0.1, n_resamples=200)
    assert s["methods"] == ["gradcam", "occlusion"]
    assert s["boxes"]["hits"] == 2 and s["by_method"]["occlusion"]["boxes"]["hits"] == 3
    o = s["by_method"]["occlusion"]["boxes"]
    assert o["n"] == 6 and o["n_patients"] == 3 and o["pointing_hit_rate"] == 0.5
    assert o["topk_ci_low"] < o["topk_precision"] < o["topk_ci_high"]
    assert s["gaze"]["n"] == 0 and s["gaze"]["hit_ci_low"] is None
