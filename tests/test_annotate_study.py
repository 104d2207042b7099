"""The annotation study (``python -m cxr_tfp.annotate study``): controls, paired gains, report, CLI.

The slow end-to-end test (two seeds, each a stage-1 run with its export and two stage-2 runs, then a re-run
and a refused one) took 21 minutes on the shared 2-core machine at load average 12-16; not measured idle.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cxr_tfp import features as F
from cxr_tfp.annotate import study
from cxr_tfp.metrics import paired_gain_over_seeds, t_interval

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cache(n=6, g=4, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.zeros((n, g, g, 2), np.float32)
    for i in range(n):   # distinct annotations: image i has i+1 marked cells
        cells = rng.permutation(g * g)[:i + 1]
        grid[i].reshape(-1, 2)[cells, i % 2] = 1.0 + i
    return {F.X_FEATURES: rng.random((n, 3, 3, 5)).astype(np.float32), F.X_ANN_GRID: grid,
            F.X_HAS_GAZE: (np.arange(n) % 2 == 0).astype(np.float32),
            F.X_HAS_BOXES: (np.arange(n) % 2 == 1).astype(np.float32),
            F.Y_LABELS: rng.integers(0, 2, (n, 4)).astype(np.float32), F.Y_MASK: np.ones((n, 4), np.float32)}


# ---------------------------------------------------------------------------------------- controls
@pytest.mark.parametrize("n", [2, 3, 10, 57])
def test_derangement_moves_every_image(n):
    perm = study.derangement(n, np.random.default_rng(n))
    assert sorted(perm) == list(range(n))
    assert not np.any(perm == np.arange(n))


def test_derangement_needs_two_images():
    with pytest.raises(ValueError, match="at least 2"):
        study.derangement(1, np.random.default_rng(0))


def test_control_across_moves_annotations_and_keeps_counts():
    cache = _cache()
    ctl = study.control_annotations(cache, "across", seed=3)
    # images and labels untouched
    for k in (F.X_FEATURES, F.Y_LABELS, F.Y_MASK):
        np.testing.assert_array_equal(ctl[k], cache[k])
    # the same annotations, each on another image: counts of gaze / boxes and the multiset kept
    assert ctl[F.X_HAS_GAZE].sum() == cache[F.X_HAS_GAZE].sum()
    assert ctl[F.X_HAS_BOXES].sum() == cache[F.X_HAS_BOXES].sum()
    assert sorted(ctl[F.X_ANN_GRID].sum((1, 2, 3))) == sorted(cache[F.X_ANN_GRID].sum((1, 2, 3)))
    for i in range(len(cache[F.Y_LABELS])):
        assert not np.array_equal(ctl[F.X_ANN_GRID][i], cache[F.X_ANN_GRID][i])
    # the annotation travels with its kind (grid and flags moved together)
    src = [int(np.flatnonzero((cache[F.X_ANN_GRID].sum((1, 2, 3)) == s))[0]) for s in ctl[F.X_ANN_GRID].sum((1, 2, 3))]
    np.testing.assert_array_equal(ctl[F.X_HAS_GAZE], cache[F.X_HAS_GAZE][src])
    # seeded: the same control for the same seed, another for another
    again = study.control_annotations(cache, "across", seed=3)
    np.testing.assert_array_equal(again[F.X_ANN_GRID], ctl[F.X_ANN_GRID])


def test_control_within_shuffles_cells_and_keeps_each_images_amount():
    cache = _cache(n=5, g=6)
    ctl = study.control_annotations(cache, "within", seed=1)
    np.testing.assert_array_equal(ctl[F.X_HAS_BOXES], cache[F.X_HAS_BOXES])
    np.testing.assert_allclose(ctl[F.X_ANN_GRID].sum((1, 2)), cache[F.X_ANN_GRID].sum((1, 2)))
    assert ((ctl[F.X_ANN_GRID] > 0).sum((1, 2, 3)) == (cache[F.X_ANN_GRID] > 0).sum((1, 2, 3))).all()
    assert not np.array_equal(ctl[F.X_ANN_GRID], cache[F.X_ANN_GRID])
    with pytest.raises(ValueError, match="unknown control"):
        study.control_annotations(cache, "elsewhere", seed=0)


# ---------------------------------------------------------------------------------------- statistics
def _known_split(n_patients=40):
    """Two images per patient; finding 0: B ranks 75% of pairs right, A all of them."""
    y = np.tile([0.0, 0.0, 1.0, 1.0], n_patients // 2)[:, None]
    b = np.tile([0.1, 0.4, 0.35, 0.8], n_patients // 2)[:, None]
    a = np.tile([0.1, 0.2, 0.7, 0.8], n_patients // 2)[:, None]
    groups = np.repeat(np.arange(n_patients), 2)[: len(y)]
    return y, a, b, groups


def test_paired_gain_on_known_numbers():
    y, a, b, groups = _known_split()
    # B's AUROC: of the 4 (pos, neg) score pairs in each block, 0.35 < 0.4 loses; across blocks the
    # same pattern repeats, so the full-data AUROC is exactly 0.75; A separates perfectly (1.0).
    res = paired_gain_over_seeds(y, np.stack([a, a, a]), np.stack([b, b, b]), None, groups, n_resamples=300)
    assert res["per_finding"][0]["gain"] == pytest.approx(0.25)
    assert res["macro"]["gain"] == pytest.approx(0.25)
    assert res["per_seed_macro"] == pytest.approx([0.25] * 3)
    lo, hi = res["macro"]["ci_low"], res["macro"]["ci_high"]
    assert lo <= 0.25 <= hi and hi - lo < 0.2
    # identical arms: exactly no gain and a zero-width interval
    same = paired_gain_over_seeds(y, np.stack([b, b]), np.stack([b, b]), None, groups, n_resamples=100)
    assert same["macro"]["gain"] == 0.0 and same["macro"]["ci_low"] == 0.0 == same["macro"]["ci_high"]


def test_paired_gain_interval_reflects_seeds_and_split_size():
    y, a, b, groups = _known_split(80)
    noise = np.random.default_rng(0).normal(0, 0.3, size=(5,) + a.shape)
    steady = paired_gain_over_seeds(y, np.stack([a] * 5), np.stack([b] * 5), None, groups, n_resamples=400)
    varied = paired_gain_over_seeds(y, a[None] + noise, np.stack([b] * 5), None, groups, n_resamples=400)
    width = lambda r: r["macro"]["ci_high"] - r["macro"]["ci_low"]  # noqa: E731
    assert width(varied) > width(steady)      # seed-to-seed variation widens it
    per_seed = np.array(varied["per_seed_macro"])
    assert varied["macro"]["gain"] == pytest.approx(per_seed.mean())
    assert len(set(np.round(per_seed, 6))) > 1
    # a smaller eval split (fewer patients) gives a wider interval for the same seeds
    ys, as_, bs, gs = _known_split(12)
    small = paired_gain_over_seeds(ys, a[None, :24] + noise[:, :24], np.stack([bs] * 5), None, gs, n_resamples=400)
    assert width(small) > width(varied)
    with pytest.raises(ValueError, match=r"\[S, N, L\]"):
        paired_gain_over_seeds(y, a, b, None, groups)


def test_t_interval_known_values():
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert t_interval([0.5]) == (0.5, None)


def _preds(n=60, seeds=3, findings=2, strength=(0.3, 0.6, 0.3), rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    y = (rng.random((n, findings)) < 0.4).astype(float)
    out = {}
    for arm, s in zip(study.ARMS, strength):
        out[arm] = np.stack([np.clip(s * y + rng.random((n, findings)) * (1 - s), 0, 1) for _ in range(seeds)])
    return y, np.ones_like(y), np.repeat(np.arange(n // 2), 2), out


def test_summary_marks_too_few_positives_and_leaves_them_out_of_the_macro():
    y, m, g, preds = _preds()
    y[:, 1] = 0.0
    y[:4, 1] = 1.0                      # 4 positives < 10
    s = study.summarise(["Mass", "Nodule"], y, m, g, preds, n_resamples=200)
    assert s["positives"] == {"Mass": int(y[:, 0].sum()), "Nodule": 4}
    nod = s["gains"]["real-none"]["per_finding"]["Nodule"]
    assert nod["note"] == "too few positives" and nod["ci_low"] is None and nod["positives"] == 4
    mass = s["gains"]["real-none"]["per_finding"]["Mass"]
    assert s["gains"]["real-none"]["macro"]["gain"] == pytest.approx(mass["gain"])   # Mass only
    assert mass["ci_low"] < mass["gain"] < mass["ci_high"] and mass["gain"] > 0      # stronger real arm
    assert "t_over_seeds" in s["gains"]["real-control"]["macro"]                     # 3 seeds
    assert "over 3 seeds and 1 findings" in study.verdict(s)


def test_summary_with_no_finding_big_enough_says_the_evidence_is_too_small():
    y, m, g, preds = _preds(n=16)
    s = study.summarise(["Mass", "Nodule"], y, m, g, preds, n_resamples=50)
    assert s["gains"]["real-control"]["macro"]["gain"] is None
    assert "too few positives" in s["gains"]["real-control"]["macro"]["note"]
    assert study.verdict(s).startswith("the evidence is too small")
    report = {"data_name": "tiny", "split": "eval", "control": "across", "seeds": [0, 1, 2],
              "config": {"stage1_epochs": 1, "stage2_epochs": 1, "beta": 1.0, "backbone": "tiny", "image_size": 32},
              "sizes": {"train_images": 20, "train_annotated": 5, "train_gaze": 5, "train_boxes": 2,
                        "eval_images": 16, "eval_patients": 8}, "summary": s, "verdict": study.verdict(s),
              "created": "now"}
    text = study.markdown(report)
    assert "16 images of 8 patients" in text and "5 of them annotated" in text
    assert text.count("too few positives") >= 5 and "evidence is too small" in text


def test_verdict_does_not_claim_a_gain_the_t_interval_over_seeds_does_not_support():
    boot = {"gain": 0.01, "ci_low": 0.001, "ci_high": 0.02}
    summary = {"enough_positives": {"Mass": True}, "min_positives": 10, "seeds": 3, "gains": {
        "real-control": {"macro": {**boot, "t_over_seeds": {"gain": 0.01, "ci_low": -0.01, "ci_high": 0.03, "seeds": 3}}},
        "real-none": {"macro": {**boot, "t_over_seeds": {"gain": 0.01, "ci_low": 0.002, "ci_high": 0.018, "seeds": 3}}}}}
    content, stage2 = study.verdict(summary).split("; ")
    assert "not established" in content and "[-0.010, +0.030]" in content
    assert stage2 == "stage 2 with annotations helps (macro +0.010, interval above 0) - over 3 seeds and 1 findings with enough positives."


def test_changed_configuration_is_refused_in_one_line(tmp_path):
    path = str(tmp_path / "config.json")
    fp = {"config": {"stage2_epochs": 3, "verbose": 0}, "control": "across"}
    study._check_config(path, fp, "OUT")
    study._check_config(path, {**fp, "config": {"stage2_epochs": 3, "verbose": 2}}, "OUT")   # verbose: same study
    with pytest.raises(study.UsageError, match=r"changed: control, stage2_epochs\); use a new --out") as exc:
        study._check_config(path, {"config": {"stage2_epochs": 4, "verbose": 0}, "control": "within"}, "OUT")
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------- CLI
def _records(root, annotated=True):
    """A tiny records folder (train/ and eval/) from the test kit."""
    from tests.evalkit import write_split

    write_split(root / "train", 12, 2, seed=0, no_positive=(), annotated_every=2 if annotated else 10**9)
    write_split(root / "eval", 20, 2, seed=1, no_positive=())
    if not annotated:   # write_split annotates image 0 in any case: rewrite train without it
        import tensorflow as tf

        f = next((root / "train").glob("*.tfrecord.gz"))
        recs = [r.numpy() for r in tf.data.TFRecordDataset(str(f), compression_type="GZIP")]
        with tf.io.TFRecordWriter(str(f), options="GZIP") as w:
            for r in recs:
                ex = tf.train.Example.FromString(r)
                if ex.features.feature[F.HAS_ANNOTATION].int64_list.value[0] == 0:
                    w.write(r)
    return root


def test_records_without_annotations_are_refused_in_one_line(tmp_path, capsys):
    data = _records(tmp_path / "rec", annotated=False)
    rc = study.main(["--data", str(data), "--out", str(tmp_path / "out"), "--findings", "synthetic",
                     "--image-size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "none of the" in err[0] and "carries an annotation" in err[0] and str(data) in err[0]
    assert not (tmp_path / "out").exists()


def test_missing_split_and_bad_options_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "rec" / "train").mkdir(parents=True)
    rc = study.main(["--data", str(tmp_path / "rec"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "has no eval/ subfolder" in capsys.readouterr().err
    rc = study.main(["--data", str(tmp_path / "rec"), "--out", str(tmp_path / "o"), "--max-train", "2"])
    assert rc == 2 and "--max-train 2" in capsys.readouterr().err


@pytest.mark.slow
def test_reduced_study_runs_resumes_and_refuses_a_changed_configuration(tmp_path):
    """The study end to end on tiny records: 2 seeds, report files, a re-run skips, a change is refused."""
    from PIL import Image

    data = _records(tmp_path / "rec")
    out = tmp_path / "study"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    args = [sys.executable, "-m", "cxr_tfp.annotate", "study", "--data", str(data), "--out", str(out),
            "--findings", "synthetic", "--backbone", "tiny", "--image-size", "32", "--latent-dim", "8",
            "--hidden-dim", "16", "--batch-size", "16", "--num-samples", "4", "--kl-warmup-epochs", "1",
            "--stage1-epochs", "1", "--seeds", "2", "--bootstrap", "100", "--max-train", "20"]
    p = subprocess.run(args + ["--stage2-epochs", "2"], env=env, capture_output=True, text=True, timeout=1800,
                       cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[study] 8/8" in p.stderr and "seed 1 (2/2) finished" in p.stderr
    report = json.loads((out / "report" / "study.json").read_text())
    assert report["seeds"] == [0, 1] and report["sizes"]["train_images"] == 20
    assert 0 < report["sizes"]["train_annotated"] < 20 and report["sizes"]["eval_images"] == 40
    s = report["summary"]
    assert set(s["gains"]) == {"real-none", "real-control"}
    for arm in study.ARMS:
        assert len(s["arms"][arm]["macro_auroc_per_seed"]) == 2
        assert (out / "work" / "seed1" / f"{arm}.npz").exists()
    md = (out / "report" / "study.md").read_text()
    assert "real - control (95% CI)" in md and "40 images of 20 patients" in md
    with Image.open(out / "report" / "study.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    # re-run: nothing retrained, same numbers
    again = subprocess.run(args + ["--stage2-epochs", "2"], env=env, capture_output=True, text=True, timeout=600,
                           cwd=REPO)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("done earlier, skipped") == 2 and "stage 1," not in again.stderr
    assert json.loads((out / "report" / "study.json").read_text())["summary"] == s
    # a changed configuration: refused in one line, nothing touched
    changed = subprocess.run(args + ["--stage2-epochs", "3"], env=env, capture_output=True, text=True, timeout=300,
                             cwd=REPO)
    lines = [ln for ln in changed.stderr.splitlines() if ln.startswith("error:")]
    assert changed.returncode == 2 and len(lines) == 1 and "stage2_epochs" in lines[0]


def test_a_second_writer_is_refused_in_one_line(tmp_path, capsys):
    from cxr_tfp.staging import OutputLock

    data = _records(tmp_path / "rec")
    out = tmp_path / "study"
    with OutputLock(out, "annotation study"):
        rc = study.main(["--data", str(data), "--out", str(out), "--findings", "synthetic", "--image-size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "is being written by another annotation study" in err[0]
    assert not (out / "work").exists()
