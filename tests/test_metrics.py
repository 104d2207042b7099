"""Metrics against hand-computed cases, with sklearn as an independent cross-check."""
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr_tfp import metrics as M

# A small case worked by hand: sorted by score, descending: 0.8(+) 0.4(-) 0.35(+) 0.1(-).
Y = np.array([0, 0, 1, 1])
S = np.array([0.1, 0.4, 0.35, 0.8])


def test_auroc_hand_case():
    # positive-negative pairs ranked correctly: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: (0.35<0.4) -> 3/4
    assert M.auroc(Y, S) == pytest.approx(0.75)


def test_auroc_ties_count_half():
    assert M.auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert M.auroc([0, 1, 1], [0.2, 0.2, 0.9]) == pytest.approx(0.75)


def test_undefined_values_are_none_not_zero_or_half():
    assert M.auroc([0, 0, 0], [0.1, 0.5, 0.9]) is None
    assert M.auroc([1, 1], [0.1, 0.5]) is None
    assert M.average_precision([0, 0], [0.3, 0.7]) is None
    ss = M.sensitivity_specificity([0, 0], [0.3, 0.7], 0.5)
    assert ss["sensitivity"] is None and ss["specificity"] == pytest.approx(0.5)
    assert M.choose_threshold([0, 0], [0.3, 0.7]) is None
    summary = M.finding_summary([0, 0, 0], [0.1, 0.2, 0.3], threshold=None)
    assert summary["auroc"] is None and summary["average_precision"] is None
    assert summary["sensitivity"] is None and summary["positives"] == 0 and summary["negatives"] == 3
    # calibration stays defined without positives: |0 - mean p| = 0.2
    assert summary["ece"] == pytest.approx(0.2)


def test_mask_drops_unknown_labels():
    # the masked pair would make AUROC 0.75 -> 1.0 without it
    y = [0, 0, 1, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.0]
    m = [1, 1, 1, 1, 0]
    assert M.auroc(y, s, m) == pytest.approx(0.75)
    assert M.auroc(y, s) == pytest.approx(0.5)
    assert M.finding_summary(y, s, m)["positives"] == 2


def test_average_precision_hand_case():
    # recall steps 0.5 at precision 1 (0.8), 0.5 at precision 2/3 (0.35)
    assert M.average_precision(Y, S) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_sensitivity_specificity_hand_case():
    c = M.confusion_at(Y, S, 0.35)
    assert c == {"tp": 2, "fp": 1, "tn": 1, "fn": 0}
    ss = M.sensitivity_specificity(Y, S, 0.35)
    assert ss["sensitivity"] == 1.0 and ss["specificity"] == 0.5 and ss["ppv"] == pytest.approx(2 / 3)


def test_thresholds_hand_case():
    # Youden J: 0.8 -> 0.5, 0.4 -> 0, 0.35 -> 0.5, 0.1 -> 0; ties go to the higher threshold
    assert M.choose_threshold(Y, S, "youden") == 0.8
    assert M.choose_threshold(Y, S, "sensitivity", target_sensitivity=0.9) == 0.35
    assert M.choose_threshold(Y, S, "sensitivity", target_sensitivity=0.5) == 0.8
    with pytest.raises(ValueError, match="unknown threshold method"):
        M.choose_threshold(Y, S, "magic")


def test_ece_and_reliability_hand_case():
    y = [0, 1, 1, 1]
    p = [0.1, 0.1, 0.9, 0.9]
    # bin 1: mean p 0.1, rate 0.5 -> 0.4 * 2/4; bin 9: mean p 0.9, rate 1 -> 0.1 * 2/4
    assert M.expected_calibration_error(y, p, 10) == pytest.approx(0.25)
    bins = M.reliability_bins(y, p, 10)
    assert bins["count"][1] == 2 and bins["count"][9] == 2 and sum(bins["count"]) == 4
    assert bins["observed_rate"][1] == 0.5 and bins["mean_predicted"][0] is None
    assert M.reliability_bins([1], [1.0], 10)["count"][9] == 1   # p == 1 lands in the last bin
    with pytest.raises(ValueError):
        M.reliability_bins([1], [1.5])


def test_matches_sklearn_on_random_data():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) * 0.5 + 0.3 * y, 2)    # rounding creates ties
    assert M.auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s))
    assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s))
    fpr, tpr, _ = M.roc_curve(y, s)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    prec, rec, thr = M.precision_recall_curve(y, s)
    sk_p, sk_r, sk_t = skm.precision_recall_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(prec[::-1], sk_p[:-1])
    np.testing.assert_allclose(rec[::-1], sk_r[:-1])


def _patients(n_patients, per_patient):
    return np.repeat([f"p{i}" for i in range(n_patients)], per_patient)


def test_resample_weights_keep_patients_together():
    groups = np.array(["a", "a", "a", "b", "c", "c"])
    w = M.patient_resample_weights(groups, 50, seed=1)
    assert w.shape == (50, 6)
    # all images of a patient get the same count; patients drawn = number of patients
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 1] == w[:, 2]) and np.all(w[:, 4] == w[:, 5])
    np.testing.assert_allclose(w[:, 0] + w[:, 3] + w[:, 4], 3)
    np.testing.assert_array_equal(w, M.patient_resample_weights(groups, 50, seed=1))
    assert not np.array_equal(w, M.patient_resample_weights(groups, 50, seed=2))


def test_bootstrap_matches_explicit_resampling():
    """The weighted fast path equals drawing patients and concatenating their images."""
    rng = np.random.default_rng(0)
    groups = _patients(30, 3)
    n = groups.size
    labels = rng.integers(0, 2, (n, 2)).astype(float)
    scores = np.clip(labels * 0.3 + rng.random((n, 2)) * 0.7, 0, 1)
    mask = np.ones_like(labels)
    mask[:10, 1] = 0
    res = M.auroc_with_ci(labels, scores, mask, groups, n_resamples=40, seed=7)
    # explicit reference with the same draws
    uniq, inverse = np.unique(groups, return_inverse=True)
    draws = np.random.default_rng(7).integers(0, len(uniq), size=(40, len(uniq)))
    ref = []
    for row in draws:
        idx = np.concatenate([np.flatnonzero(inverse == p) for p in row])
        keep = mask[idx, 1] > 0
        ref.append(skm.roc_auc_score(labels[idx, 1][keep], scores[idx, 1][keep]))
    lo, hi = np.quantile(ref, [0.025, 0.975])
    f1 = res["per_finding"][1]
    assert f1["ci_low"] == pytest.approx(lo) and f1["ci_high"] == pytest.approx(hi)
    assert f1["auroc"] == pytest.approx(skm.roc_auc_score(labels[10:, 1], scores[10:, 1]))
    assert res["per_finding"][0]["ci_low"] <= res["per_finding"][0]["auroc"] <= res["per_finding"][0]["ci_high"]
    macro = np.mean([res["per_finding"][0]["auroc"], f1["auroc"]])
    assert res["macro"]["auroc"] == pytest.approx(macro)
    keep = mask > 0
    assert res["micro"]["auroc"] == pytest.approx(skm.roc_auc_score(labels[keep], scores[keep]))


def test_bootstrap_is_patient_level_not_image_level():
    # patient a has all positives, b all negatives: a resample is defined only when both are drawn
    # (prob 1/2). Image-level resampling of 20 images would almost always be defined.
    groups = np.array(["a"] * 10 + ["b"] * 10)
    labels = np.r_[np.ones(10), np.zeros(10)][:, None]
    scores = np.linspace(0, 1, 20)[:, None]
    res = M.auroc_with_ci(labels, scores, None, groups, n_resamples=400, seed=0)
    assert 150 < res["per_finding"][0]["n_valid"] < 250


def test_bootstrap_undefined_finding_reports_null():
    groups = _patients(10, 2)
    labels = np.zeros((20, 2))
    labels[::3, 0] = 1
    scores = np.random.default_rng(1).random((20, 2))
    res = M.auroc_with_ci(labels, scores, None, groups, n_resamples=30)
    none = res["per_finding"][1]
    assert none["auroc"] is None and none["ci_low"] is None and none["ci_high"] is None
    assert res["macro"]["auroc"] == pytest.approx(res["per_finding"][0]["auroc"])
    text = json.dumps(M.sanitize(res), allow_nan=False)   # raises on NaN
    assert "NaN" not in text


def test_paired_difference():
    rng = np.random.default_rng(5)
    groups = _patients(40, 2)
    labels = rng.integers(0, 2, (80, 3)).astype(float)
    noise = rng.random((80, 3))
    weak = 0.2 * labels + noise
    strong = 0.8 * labels + noise
    same = M.paired_auroc_difference(labels, weak, weak, None, groups, n_resamples=50)
    assert same["difference"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    assert same["p_value"] == 1.0
    better = M.paired_auroc_difference(labels, weak, strong, None, groups, n_resamples=200)
    expected = np.mean([skm.roc_auc_score(labels[:, j], strong[:, j]) - skm.roc_auc_score(labels[:, j], weak[:, j])
                        for j in range(3)])
    assert better["difference"] == pytest.approx(expected)
    assert 0 < better["ci_low"] < better["difference"] < better["ci_high"]
    assert better["p_value"] < 0.05


def test_referral_hand_case():
    y = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    p = [0.9, 0.1, 0.8, 0.2, 0.45, 0.55, 0.7, 0.3, 0.6, 0.4]
    # the two wrongly-ordered cases (0.45+, 0.55-) are the most uncertain ones
    u = [0.0, 0.0, 0.0, 0.0, 0.9, 0.8, 0.0, 0.0, 0.0, 0.0]
    curve = M.referral_curve(y, p, u, fractions=(0.1, 0.2))
    assert [c["fraction"] for c in curve] == [0.0, 0.1, 0.2]
    assert [c["referred"] for c in curve] == [0, 1, 2]
    assert curve[0]["auroc"] == pytest.approx(M.auroc(y, p))
    assert curve[0]["auroc"] < 1.0
    # referring 0.45(+) leaves positives 0.6..0.9 above all negatives except 0.55 < 0.6: perfect
    assert curve[1]["auroc"] == pytest.approx(1.0)
    assert curve[2]["auroc"] == pytest.approx(1.0) and curve[2]["positives_kept"] == 4


def test_pointing_game_and_topk():
    region = np.zeros((4, 4), bool)
    region[:2, :2] = True
    sal = np.zeros((4, 4))
    sal[0, 1] = 1.0
    assert M.pointing_game_hit(sal, region)
    sal2 = np.zeros((4, 4))
    sal2[3, 3] = 1.0
    assert not M.pointing_game_hit(sal2, region)
    assert not M.pointing_game_hit(np.ones((4, 4)), region)   # a flat map points nowhere
    # top 25% = 4 pixels: 3 in the region (0,0),(0,1),(1,0) and one outside (3,3)
    sal3 = np.zeros((4, 4))
    sal3[0, 0], sal3[0, 1], sal3[1, 0], sal3[3, 3] = 4, 3, 2, 1
    ov = M.top_k_overlap(sal3, region, k=0.25)
    assert ov["precision"] == pytest.approx(0.75)
    assert ov["iou"] == pytest.approx(3 / 5)
    assert ov["chance"] == pytest.approx(0.25)
    agg = M.saliency_agreement(np.stack([sal, sal2]), [region, region], k=0.25)
    assert agg["n"] == 2 and agg["hits"] == 1 and agg["pointing_hit_rate"] == 0.5
    assert M.saliency_agreement(np.zeros((0, 4, 4)), [])["pointing_hit_rate"] is None


def test_annotation_region_prefers_boxes():
    gaze = np.zeros((4, 4))
    gaze[3, 3] = 1.0
    gaze[3, 2] = 0.6
    gaze[0, 0] = 0.2
    boxes = np.zeros((4, 4))
    boxes[0, 0] = 1
    np.testing.assert_array_equal(M.annotation_region(gaze, boxes), boxes > 0)
    reg = M.annotation_region(gaze, np.zeros((4, 4)))
    assert reg.sum() == 2 and reg[3, 3] and reg[3, 2]
    assert M.annotation_region(np.zeros((4, 4)), None) is None


def test_sanitize_replaces_nan():
    out = M.sanitize({"a": np.float32("nan"), "b": [np.int64(3), np.inf], "c": np.array([1.5])})
    assert out == {"a": None, "b": [3, None], "c": [1.5]}


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="differ in length"):
        M.auroc([0, 1], [0.1])
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        M.auroc_with_ci(np.zeros((3, 2)), np.zeros((3, 1)), None, ["a", "b", "c"], n_resamples=2)


def test_wilson_interval_known_values():
    lo, hi = M.wilson_interval(1, 15)
    assert lo == pytest.approx(0.0119, abs=1e-3) and hi == pytest.approx(0.2983, abs=1e-3)
    assert M.wilson_interval(0, 0) == (None, None)
    lo, hi = M.wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and 0.69 < lo < 0.73


def test_patient_bootstrap_of_a_mean_keeps_patients_together():
    v = [0.0, 0.0, 1.0, 1.0]
    lo, hi = M.weighted_mean_ci(v, ["a", "a", "b", "b"], n_resamples=500, seed=1)
    assert lo == 0.0 and hi == 1.0                  # two patients: resamples give 0, 0.5 or 1 only
    lo, hi = M.weighted_mean_ci([0.3] * 5, list("abcde"), n_resamples=50)
    assert lo == pytest.approx(0.3) and hi == pytest.approx(0.3)


def test_choose_thresholds_is_the_per_finding_rule_with_a_default_where_undefined():
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], np.float32)
    probs = np.array([[0.9, 0.1], [0.2, 0.3], [0.7, 0.2], [0.4, 0.6]], np.float32)
    mask = np.ones_like(labels)
    got = M.choose_thresholds(["a", "b"], probs, labels, mask, "youden", default=0.5)
    assert got == {"a": pytest.approx(0.7), "b": 0.5}          # b has no positive: the default
    assert M.choose_thresholds(["a", "b"], probs, labels, mask)["b"] is None
    assert M.choose_thresholds(["a", "b"], probs, labels, mask, "fixed", fixed=0.3) == {"a": 0.3, "b": 0.3}
    assert M.choose_thresholds(["a"], probs[:0], labels[:0], mask[:0], default=0.5) == {"a": 0.5}
