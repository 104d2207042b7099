"""Decisions that show their doubt: threshold provenance (a fallback is marked) and "uncertain" calls,
in thresholds.json, the client table, the predictor's DataFrame and the report (issue 20 point 1)."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from cxr_tfp import client
from cxr_tfp import metrics as M
from cxr_tfp import model_dir as MD


def _eval_split():
    # finding a: 2 positives, 3 negatives; finding b: no positive at all on the threshold split
    labels = np.array([[1, 0], [1, 0], [0, 0], [0, 0], [0, 0]], float)
    probs = np.array([[0.9, 0.2], [0.7, 0.1], [0.3, 0.4], [0.2, 0.3], [0.1, 0.2]])
    return labels, probs


def test_a_threshold_chosen_without_positives_is_recorded_as_a_fallback():
    labels, probs = _eval_split()
    thr = M.choose_thresholds(["a", "b"], probs, labels, default=0.5)
    prov = M.threshold_provenance(["a", "b"], thr, labels, None, "youden", "eval")
    assert thr["b"] == 0.5
    assert prov["a"] == {"source": "chosen", "method": "youden", "split": "eval", "positives": 2, "negatives": 3}
    assert prov["b"]["source"] == "fallback" and prov["b"]["positives"] == 0
    fixed = M.threshold_provenance(["a"], {"a": 0.3}, labels[:, :1], None, "fixed")
    assert fixed["a"]["source"] == "fixed"
    assert M.provenance_text(prov["b"]) == "FALLBACK (no positives on eval)"
    # evaluate keeps no default: an undefined threshold is "undefined", shown n/a
    undefined = M.threshold_provenance(["b"], {"b": None}, labels[:, 1:], None, "youden", "eval")
    assert undefined["b"]["source"] == "undefined"


def test_thresholds_json_keeps_provenance_and_still_reads_the_flat_format(tmp_path):
    path = tmp_path / MD.THRESHOLDS_ASSET
    MD.write_thresholds(path, {"a": 0.42, "b": 0.5}, {"a": {"source": "chosen", "positives": 2},
                                                      "b": {"source": "fallback", "positives": 0}})
    doc = json.loads(path.read_text())
    assert doc["b"] == {"threshold": 0.5, "source": "fallback", "positives": 0}
    assert MD.read_thresholds_file(path) == {"a": 0.42, "b": 0.5}
    assert MD.read_threshold_provenance_file(path)["b"]["source"] == "fallback"
    path.write_text(json.dumps({"a": 0.3}))            # an export from before provenance was recorded
    assert MD.read_thresholds_file(path) == {"a": 0.3}
    assert MD.read_threshold_provenance_file(path) == {"a": {"source": "unknown"}}


def test_a_margin_smaller_than_the_uncertainty_is_uncertain_not_a_call():
    # the case: 0.4208 against 0.4201 with an uncertainty of 0.25 is no firm call
    assert M.decide(0.4208, 0.25, 0.4201) == "uncertain"
    assert M.decide(0.90, 0.10, 0.50) == "above"
    assert M.decide(0.10, 0.10, 0.50) == "below"
    assert M.decide(0.50, 0.0, 0.50) == "above"          # p >= threshold, as everywhere
    assert M.decide(0.45, float("nan"), 0.50) == "below"  # unknown uncertainty: the raw call
    got = M.decide(np.array([[0.556, 0.9]]), np.array([[0.01, 0.0]]), np.array([[0.556, 0.5]]))
    assert got.tolist() == [["uncertain", "above"]]


def _outputs(sources=True):
    out = {MD.PROBABILITIES: np.array([[0.184, 0.4208, 0.043]]),
           MD.UNCERTAINTY: np.array([[0.02, 0.25, 0.001]]),
           MD.LABEL_NAMES: np.array([[b"Effusion", b"Mass", b"Hernia"]]),
           MD.THRESHOLDS: np.array([[0.5, 0.4201, 0.037]])}
    if sources:
        out[MD.THRESHOLD_SOURCES] = np.array([[b"fallback", b"chosen", b"chosen"]])
        out[MD.THRESHOLD_POSITIVES] = np.array([[0, 3, 1]], np.int32)
    return out


def test_client_table_marks_the_fallback_and_the_uncertain_call_and_keeps_raw_numbers():
    (r,) = client.build_results(["x.png"], _outputs(), "cxr_tfp", 1, MD.IMAGE_SIGNATURE)
    by = {f["finding"]: f for f in r["findings"]}
    assert by["Effusion"]["threshold_from"] == "fallback" and by["Effusion"]["decision"] == "below"
    assert by["Mass"]["decision"] == "uncertain" and by["Mass"]["above_threshold"] is True
    assert by["Hernia"]["decision"] == "above" and by["Hernia"]["threshold_positives"] == 1
    table = client.format_table([r])
    line = {ln.split()[0]: ln for ln in table.splitlines() if ln.startswith("  ") and ln.split()[0] in by}
    assert "FALLBACK (no positives)" in line["Effusion"] and "below" in line["Effusion"]
    assert "uncertain" in line["Mass"] and "ABOVE" not in line["Mass"]
    assert "ABOVE" in line["Hernia"] and "chosen on 1 positive" in line["Hernia"]
    assert "uncertain: |prob - thresh| < uncert" in table and "FALLBACK: the split" in table


def test_client_says_unknown_for_an_export_without_provenance_and_reads_it_from_model_dir():
    (r,) = client.build_results(["x.png"], _outputs(sources=False), "cxr_tfp", 1, MD.IMAGE_SIGNATURE)
    assert {f["threshold_from"] for f in r["findings"]} == {"unknown"}
    (r,) = client.build_results(["x.png"], _outputs(sources=False), "cxr_tfp", 1, MD.IMAGE_SIGNATURE,
                                provenance={"Effusion": {"source": "fallback", "positives": 0}})
    assert r["findings"][0]["threshold_from"] == "fallback"


def test_predictor_dataframe_adds_call_and_threshold_from_beside_the_raw_decision():
    from cxr_tfp.predictor import FIELDS, Predictor

    pred = Predictor.__new__(Predictor)
    pred.kind, pred.path = "keras", "stub.keras"
    pred.findings = ("Mass", "Hernia")
    pred.thresholds = {"Mass": 0.4201, "Hernia": 0.5}
    pred._model = SimpleNamespace(threshold_provenance={"Mass": {"source": "chosen", "positives": 3},
                                                        "Hernia": {"source": "fallback", "positives": 0}})
    pred._run_keras = lambda items: (np.array([[0.4208, 0.9]] * len(items)), np.array([[0.25, 0.01]] * len(items)))
    table = pred.predict([np.zeros((8, 8), np.uint8)])
    assert set(FIELDS) <= set(table.columns.get_level_values("field"))
    row = table.iloc[0]
    assert bool(row[("Mass", "decision")]) is True            # the raw comparison, as before
    assert row[("Mass", "call")] == "uncertain" and row[("Hernia", "call")] == "above"
    assert row[("Hernia", "threshold_from")] == "fallback" and row[("Mass", "threshold_from")] == "chosen"
    assert table.attrs["threshold_provenance"]["Hernia"]["source"] == "fallback"


def test_report_shows_fallback_uncertain_counts_and_no_interval_under_ten_positives():
    from cxr_tfp.report import markdown as R

    pf = {"auroc": 0.702, "auroc_ci_low": 0.579, "auroc_ci_high": 0.821, "positives": 1, "negatives": 18,
          "threshold": 0.5, "threshold_from": "fallback", "threshold_positives": 0, "uncertain_calls": 4}
    assert R.auroc_text(pf, "n/a", 10) == "0.702 (too few positives for an interval: n+=1)"
    assert "0.579" not in R.auroc_text(pf, "n/a", 10)
    assert R.auroc_text({**pf, "positives": 12}, "n/a", 10) == "0.702 (0.579-0.821)"
    assert R.threshold_cell(pf) == "0.500 (FALLBACK)"
    assert R.threshold_cell({**pf, "threshold_from": "chosen", "threshold_positives": 5}) == "0.500 (chosen, 5 pos.)"
    assert R.uncertain_cell(pf) == "4 of 19"


def test_model_config_keeps_threshold_provenance():
    from cxr_tfp.config import load_config
    from cxr_tfp.model import build_model

    model = build_model(load_config(overrides={"backbone": "tiny", "image_size": 32, "findings": "synthetic",
                                               "num_samples": 2}))
    f0, f1 = model.findings[:2]
    model.set_thresholds({f0: 0.3, f1: 0.5}, {f0: {"source": "chosen", "positives": 4},
                                              f1: {"source": "fallback", "positives": 0}})
    clone = type(model).from_config(model.get_config())
    assert clone.thresholds[f0] == pytest.approx(0.3)
    assert clone.threshold_provenance[f1]["source"] == "fallback"
    model.set_thresholds({f1: 0.6})      # a threshold set by hand has no recorded provenance
    assert f1 not in model.threshold_provenance


@pytest.mark.slow
def test_export_ships_provenance_in_assets_and_signature(tmp_path):
    import tensorflow as tf

    from cxr_tfp.config import load_config
    from cxr_tfp.export import export_saved_model
    from cxr_tfp.model import build_model

    model = build_model(load_config(overrides={"backbone": "tiny", "image_size": 32, "findings": "synthetic",
                                               "num_samples": 2}))
    f0 = model.findings[0]
    model.set_thresholds({f0: 0.5}, {f0: {"source": "fallback", "positives": 0, "method": "youden"}})
    out = export_saved_model(model, str(tmp_path / "cxr_tfp" / "1"))
    assert MD.read_threshold_provenance(out)[f0]["source"] == "fallback"
    from cxr_tfp import features

    loaded = tf.saved_model.load(out)
    res = loaded.signatures[MD.IMAGE_SIGNATURE](
        **{MD.IMAGES_INPUT: tf.constant([features.encode_png(np.full((32, 32), 90, np.uint8))])})
    assert res[MD.THRESHOLD_SOURCES].numpy()[0, 0] == b"fallback"
    assert res[MD.THRESHOLD_POSITIVES].numpy()[0, 0] == 0
    assert res[MD.THRESHOLD_SOURCES].numpy()[0, 1] == b"unknown"
