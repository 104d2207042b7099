"""End-to-end evaluation: TFRecords -> adapter -> metrics.json / report.md / figures.

A stand-in model with known outputs checks the numbers against an independent recomputation
(sklearn on arrays read through the input contract); a real (untrained, tiny) CxrModel saved as
.keras and exported as a SavedModel checks both adapters agree and the CLI works.
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr_tfp import evaluate as E
from cxr_tfp import metrics as M
from tests.evalkit import FINDS, SIZE, StubAdapter, make_data, write_split


def _no_nan(text: str):
    def bad(c):
        raise AssertionError(f"non-JSON constant {c} in metrics.json")
    return json.loads(text, parse_constant=bad)


def _linked_images(report: str):
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)


def _read_split(path: Path):
    """Labels, mask, patient keys and annotation flags read through the input contract."""
    from cxr_tfp.input import make_dataset

    ys, ms, pks, ann = [], [], [], []
    for x, y, meta in make_dataset(str(path), SIZE, FINDS, 16, with_meta=True):
        ys.append(y["labels"].numpy())
        ms.append(y["mask"].numpy())
        pks += [k.decode() for k in meta["patient_key"].numpy()]
        ann.append((x["has_gaze"].numpy() > 0) | (x["has_boxes"].numpy() > 0))
    return np.concatenate(ys), np.concatenate(ms), np.array(pks), np.concatenate(ann)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("evaldata"))


@pytest.fixture(scope="module")
def stub_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stub_out")
    a, b = StubAdapter("weak", 0.3), StubAdapter("strong", 0.7)
    res = E.evaluate(a, str(data), str(out), compare=b, options=E.EvalOptions(n_resamples=200, seed=3))
    return out, res, a


def test_metrics_json_is_strict_json_and_matches_return(stub_run):
    out, res, _ = stub_run
    on_disk = _no_nan((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert on_disk["bootstrap"] == {"n_resamples": 200, "seed": 3, "alpha": 0.05, "unit": "patient"}


def test_numbers_match_independent_recomputation(stub_run, data):
    out, res, _ = stub_run
    labels, mask, pks, _ = _read_split(data / "test")
    a_adapter = StubAdapter("weak", 0.3)
    pred = E.collect(a_adapter, E.split_files(str(data), "test"), saliency=False)
    np.testing.assert_array_equal(pred.labels, labels)
    np.testing.assert_array_equal(pred.mask, mask)
    np.testing.assert_array_equal(pred.patient_keys, pks)
    m = res["models"][0]
    assert m["n_images"] == len(labels) and m["n_patients"] == len(set(pks))
    aurocs = []
    for j, f in enumerate(FINDS):
        keep = mask[:, j] > 0
        pf = m["per_finding"][f]
        assert pf["positives"] == int(labels[keep, j].sum())
        assert pf["negatives"] == int(keep.sum() - labels[keep, j].sum())
        assert pf["unknown"] == int((~keep).sum())
        if pf["positives"]:
            expected = skm.roc_auc_score(labels[keep, j], pred.probs[keep, j])
            assert pf["auroc"] == pytest.approx(expected)
            assert pf["average_precision"] == pytest.approx(skm.average_precision_score(labels[keep, j], pred.probs[keep, j]))
            assert pf["auroc_ci_low"] <= pf["auroc"] <= pf["auroc_ci_high"]
            aurocs.append(expected)
    assert m["macro"]["auroc"] == pytest.approx(np.mean(aurocs))
    k = mask > 0
    assert m["micro"]["auroc"] == pytest.approx(skm.roc_auc_score(labels[k], pred.probs[k]))


def test_finding_without_positives_is_undefined(stub_run):
    out, res, _ = stub_run
    nod = res["models"][0]["per_finding"]["Nodule"]
    assert nod["positives"] == 0
    for key in ("auroc", "auroc_ci_low", "auroc_ci_high", "average_precision", "sensitivity"):
        assert nod[key] is None, key
    assert nod["specificity"] is not None and nod["ece"] is not None
    report = (out / "report.md").read_text()
    row = next(l for l in report.splitlines() if l.startswith("| Nodule |"))
    assert "n/a (no positives)" in row
    assert "nan" not in report.lower()


def test_thresholds_come_from_eval_split(stub_run, data):
    out, res, _ = stub_run
    ev = E.collect(StubAdapter("weak", 0.3), E.split_files(str(data), "eval"), saliency=False)
    test = E.collect(StubAdapter("weak", 0.3), E.split_files(str(data), "test"), saliency=False)
    for j, f in enumerate(FINDS):
        thr = M.choose_threshold(ev.labels[:, j], ev.probs[:, j], "youden", mask=ev.mask[:, j])
        pf = res["models"][0]["per_finding"][f]
        assert pf["threshold"] == pytest.approx(thr)
        ss = M.sensitivity_specificity(test.labels[:, j], test.probs[:, j], thr, test.mask[:, j])
        assert pf["specificity"] == pytest.approx(ss["specificity"])
    assert res["threshold"]["split"] == "eval" and res["threshold"]["method"] == "youden"
    written = json.loads((out / "thresholds.json").read_text())
    assert set(written) == set(FINDS)


def test_comparison_sees_the_better_model(stub_run):
    _, res, _ = stub_run
    c = res["comparison"]
    a = res["models"][0]["macro"]["auroc"]
    b = res["models"][1]["macro"]["auroc"]
    assert c["difference"] == pytest.approx(b - a)
    assert c["difference"] > 0 and c["ci_low"] > 0
    assert c["findings_used"] == 3       # Nodule has no positives


def test_saliency_agreement_over_all_annotated_positive_images(stub_run, data):
    _, res, stub = stub_run
    labels, mask, _, annotated = _read_split(data / "test")
    expected_n = int(np.sum(annotated & ((labels * mask) > 0).any(axis=1)))
    sal = res["models"][0]["saliency"]
    assert sal["available"]
    assert sal["boxes"]["n"] == expected_n and sal["gaze"]["n"] == expected_n
    # the stand-in's saliency is the image, whose bright spot lies inside the box and the gaze peak
    assert sal["boxes"]["pointing_hit_rate"] == 1.0 and sal["boxes"]["hits"] == expected_n
    assert sal["boxes"]["topk_precision"] > sal["boxes"]["topk_chance"]
    assert sum(n for n, _ in stub.calls) >= expected_n


def test_every_linked_figure_exists(stub_run):
    from PIL import Image

    out, res, _ = stub_run
    report = (out / "report.md").read_text()
    links = _linked_images(report)
    assert {"roc.png", "pr.png", "reliability.png", "referral.png", "saliency_agreement.png",
            "saliency_examples_a.png", "saliency_examples_b.png"} <= set(links)
    for name in links:
        with Image.open(out / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200
            # not a blank canvas
            assert np.asarray(im.convert("L")).std() > 5
    # summary before per-finding detail
    assert report.index("## Summary") < report.index("## Per-finding detail")


def test_missing_eval_split_falls_back_to_fixed_threshold(tmp_path):
    write_split(tmp_path / "data" / "test", 8, 2, seed=4)
    res = E.evaluate(StubAdapter("s", 0.5, saliency=False), str(tmp_path / "data"), str(tmp_path / "out"),
                     options=E.EvalOptions(n_resamples=20), figures=False)
    assert res["threshold"]["method"] == "fixed" and "no 'eval' split" in res["threshold"]["note"]
    assert all(pf["threshold"] == 0.5 for pf in res["models"][0]["per_finding"].values())
    assert res["models"][0]["saliency"] == {"available": False, "reason": "stub without saliency"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "no 'eval' split" in report and "saliency not available" in report
    assert _linked_images(report) == []


def test_clear_errors(tmp_path, data):
    with pytest.raises(FileNotFoundError, match="nowhere.keras"):
        E.load_adapter(str(tmp_path / "nowhere.keras"))
    with pytest.raises(FileNotFoundError, match="'train' split"):
        E.split_files(str(data), "train")
    with pytest.raises(ValueError, match="threshold_method"):
        E.EvalOptions(threshold_method="best")
    with pytest.raises(ValueError, match="share no findings"):
        E.evaluate(StubAdapter("a", findings=("Mass",)), str(data), str(tmp_path / "o"),
                   compare=StubAdapter("b", findings=("Nodule",)), figures=False)


# ------------------------------------------------------------------- the real model, both formats
@pytest.fixture(scope="module")
def real_models(tmp_path_factory):
    from cxr_tfp.export import export_saved_model
    from cxr_tfp.model import CxrModel

    d = tmp_path_factory.mktemp("models")
    model = CxrModel(backbone="tiny", image_size=SIZE, findings=list(FINDS), latent_dim=8, hidden_dim=16,
                     num_samples=4, seed=1)
    model.save(str(d / "model.keras"))
    export_saved_model(model, str(d / "saved_model"), precision="float32")   # compared to 1e-5 below
    return d


def test_keras_and_saved_model_adapters_agree(real_models, data):
    k = E.load_adapter(str(real_models / "model.keras"))
    s = E.load_adapter(str(real_models / "saved_model"))
    assert isinstance(k, E.KerasAdapter) and isinstance(s, E.SavedModelAdapter)
    assert k.findings == s.findings == FINDS
    files = E.split_files(str(data), "test")
    pk = E.collect(k, files, batch_size=16, max_saliency=5, n_examples=2)
    ps = E.collect(s, files, batch_size=16)
    np.testing.assert_allclose(pk.probs, ps.probs, atol=1e-5)
    np.testing.assert_allclose(pk.uncertainty, ps.uncertainty, atol=1e-5)
    assert np.all(pk.uncertainty >= 0) and np.all((pk.probs >= 0) & (pk.probs <= 1))
    # three methods (Grad-CAM, occlusion, prior attention) on each of the 5 images
    boxes = [r for r in pk.agreement if r["type"] == "boxes"]
    assert len(boxes) == 15 and sorted({r["method"] for r in boxes}) == ["attention", "gradcam", "occlusion"]
    assert len(pk.examples) == 2 and sorted(pk.examples[0].maps) == ["attention", "gradcam", "occlusion"]
    assert pk.examples[0].saliency.shape == (SIZE, SIZE)
    assert np.array_equal(pk.examples[0].saliency, pk.examples[0].maps["gradcam"])
    with pytest.raises(ValueError, match="not available"):
        E.collect(k, files, batch_size=16, max_saliency=1, saliency_methods=["shap"])
    assert ps.saliency_reason is not None and "SavedModel" in ps.saliency_reason and not ps.agreement


def test_cli_compares_keras_with_saved_model(real_models, data, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = E.main(["--model", str(real_models / "model.keras"), "--compare", str(real_models / "saved_model"),
                 "--data", str(data), "--out", str(out), "--bootstrap", "30", "--threshold-method",
                 "sensitivity", "--target-sensitivity", "0.8", "--max-saliency", "4", "--examples", "2",
                 "--saliency-methods", "occlusion,gradcam"])
    assert rc == 0
    printed = capsys.readouterr().out
    res = _no_nan((out / "metrics.json").read_text())
    assert res["threshold"]["method"] == "sensitivity" and res["threshold"]["target_sensitivity"] == 0.8
    assert [m["kind"] for m in res["models"]] == ["keras", "saved_model"]
    # identical predictions -> a paired difference of exactly zero
    assert res["comparison"]["difference"] == pytest.approx(0.0, abs=1e-9)
    assert res["models"][1]["saliency"]["available"] is False
    assert res["models"][0]["saliency"]["methods"] == ["occlusion", "gradcam"]   # primary first, as asked
    report = (out / "report.md").read_text()
    assert "Grad-CAM needs the Keras model" in report
    for name in _linked_images(report):
        assert (out / name).is_file(), name
    assert "report:" in printed and "macro AUROC" in printed


# ------------------------------------------------------------ a trained model: stage 1 vs stage 2
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Smoke-config training on 64 px toy data (~20 s); the stage-1 weights rebuilt as a second model."""
    from cxr_tfp import train
    from cxr_tfp.config import load_config
    from cxr_tfp.model import build_model

    root = tmp_path_factory.mktemp("trained")
    data = make_data(root / "data", size=64, n_train_patients=60)
    cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"))
    cfg.verbose = 0
    train_metrics = train.train_model(cfg, str(data / "train"), str(data / "eval"), str(root / "run"))
    stage1 = build_model(cfg)
    stage1.load_weights(str(root / "run" / "stage1.weights.h5"))
    stage1.save(str(root / "stage1.keras"))
    return data, root, train_metrics


@pytest.mark.slow  # a 64 px training (the `trained` fixture)
def test_trained_model_eval_split_matches_training_metrics(trained, tmp_path):
    """Two independent code paths (training's eval and this module) give the same eval-split AUROCs."""
    data, root, tm = trained
    res = E.evaluate(str(root / "run" / "model.keras"), str(data), str(tmp_path), split="eval",
                     compare=str(root / "stage1.keras"), options=E.EvalOptions(n_resamples=20),
                     max_saliency=8, n_examples=3, figures=False)
    final, first = res["models"]
    for f in FINDS:
        assert final["per_finding"][f]["auroc"] == pytest.approx(tm[tm["final_stage"]]["auroc"][f], abs=1e-6)
        assert first["per_finding"][f]["auroc"] == pytest.approx(tm["stage1"]["auroc"][f], abs=1e-6)


@pytest.mark.slow
def test_trained_cli_stage1_vs_stage2_on_test(trained, tmp_path):
    data, root, _ = trained
    out = tmp_path / "cmp"
    assert E.main(["--model", str(root / "stage1.keras"), "--compare", str(root / "run" / "model.keras"),
                   "--data", str(data), "--out", str(out), "--bootstrap", "100", "--examples", "3"]) == 0
    res = _no_nan((out / "metrics.json").read_text())
    a, b = res["models"]
    c = res["comparison"]
    # Nodule has no positives on the test split: left out of the paired difference
    assert c["findings_used"] == 3 and a["per_finding"]["Nodule"]["auroc"] is None
    assert c["difference"] == pytest.approx(b["macro"]["auroc"] - a["macro"]["auroc"])
    assert c["ci_low"] <= c["difference"] <= c["ci_high"]
    # the toy findings are learnable: the trained model beats chance on the test split
    assert b["macro"]["auroc"] > 0.6
    sal = b["saliency"]
    assert sal["available"] and sal["boxes"]["n"] > 0
    assert 0.0 <= sal["boxes"]["pointing_hit_rate"] <= 1.0
    report = (out / "report.md").read_text()
    for name in _linked_images(report):
        assert (out / name).is_file(), name


def test_bad_records_name_the_file(tmp_path):
    import tensorflow as tf

    bad = tmp_path / "bad" / "test"
    bad.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(bad / "x.tfrecord.gz"), options="GZIP") as w:
        ex = tf.train.Example(features=tf.train.Features(feature={
            "labels": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0]))}))
        w.write(ex.SerializeToString())
    with pytest.raises(ValueError, match=r"x\.tfrecord\.gz.*contract"):
        E.collect(StubAdapter("s"), E.split_files(str(tmp_path / "bad"), "test"))
    (bad / "x.tfrecord.gz").write_bytes(b"not a tfrecord at all")
    with pytest.raises(ValueError, match=r"x\.tfrecord\.gz.*not readable"):
        E.collect(StubAdapter("s"), E.split_files(str(tmp_path / "bad"), "test"))
