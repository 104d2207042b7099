"""THE end-to-end run of the TFX pipeline on a tiny raw dataset (LocalDagRunner, SQLite MLMD).

One module-scoped sequence on one pipeline root, starting from a raw synthetic image folder (span 1):
1. the chest X-ray ExampleGen builds the splits; a good model is blessed (value threshold, no
   baseline yet) and pushed as a loadable SavedModel; its lineage leads back to the raw folder;
2. the unchanged pipeline again: every component up to the Trainer comes from the TFX cache, and
   the same model is not pushed a second time;
3. a deliberately worse model (learning rate ~0, one epoch): rejected by the change threshold
   against the blessed baseline, nothing pushed;
and, on its own pipeline root, finished TFRecords (the ImportExampleGen option) with an injected
anomaly stop at the gate before training. New spans: tests/pipeline/test_pipeline_spans.py (slow).
"""
import os

import numpy as np
import pytest

import pipeline  # noqa: F401  (Keras 3 pin before tfx)
from cxr_tfp import features as F
from cxr_tfp import model_dir as MD
from cxr_tfp.config import load_config
from cxr_tfp.labels import SYNTHETIC_FINDINGS
from pipeline import configs
from pipeline import dag as P
from pipeline import run_report as R
from tests.pipeline.synthetic_records import write_splits

RAW_FRACTIONS = (0.5, 0.2, 0.3)
PATIENTS = 50                      # 2 images each: 50 / 20 / 30 images in train / eval / test

pytestmark = pytest.mark.e2e

IMAGE_SIZE = 32
SIZES = {"train": 50, "eval": 20, "test": 30}
GOOD = {"image_size": IMAGE_SIZE, "stage1_epochs": 4, "stage2_epochs": 1, "verbose": 0}
WORSE = dict(GOOD, stage1_lr=1e-9, stage2_lr=1e-9, stage1_epochs=1, stage2_epochs=0)
LOWER_BOUND = 0.3   # the floor for the lower end of the macro AUROC's 95% interval
MAX_DROP = 0.01
# 30 test images: a finding counts in the gate's macro with >= 3 positives and negatives there
GATE_MIN = 3


def _run(settings, overrides):
    from tfx import v1 as tfx

    tc = load_config(configs.DEFAULT_TRAIN_CONFIG, overrides).to_dict()
    tfx.orchestration.LocalDagRunner().run(P.create_pipeline(settings, train_config=tc))
    return R.latest_run(settings.resolved_metadata_path)


def raw_settings(root, **kw):
    """Settings of a pipeline over the raw synthetic folder ``root/raw`` (span folders)."""
    return configs.PipelineSettings(
        output_root=str(root / "out"), input="raw", raw_root=str(root / "raw"), dataset="synthetic",
        adapter_options={"split_fractions": ",".join(map(str, RAW_FRACTIONS))}, **kw)


def write_raw_span(root, span, seed=0):
    """A raw synthetic dataset (NIH + EGD layout) in ``root/raw/<span>/``."""
    from cxr_tfp.datasets.synthetic import generate

    return generate(root / "raw" / str(span), n_patients=PATIENTS, images_per_patient=2,
                    image_size=IMAGE_SIZE, contrast=4.0, seed=seed, split_fractions=RAW_FRACTIONS)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The one pipeline run of the default test set."""
    root = tmp_path_factory.mktemp("tfx_e2e")
    write_raw_span(root, 1)
    settings = raw_settings(root, macro_auc_lower_bound=LOWER_BOUND, macro_auc_max_drop=MAX_DROP,
                            gate_min_positives=GATE_MIN, gate_min_negatives=GATE_MIN,
                            gate_bootstrap=200)
    out = {"settings": settings}
    out["first"] = _run(settings, GOOD)
    out["versions_after_first"] = R.pushed_versions(settings.push_base)
    return out


@pytest.fixture(scope="module")
def runs(first_run):
    """Two more runs over the same store (slow tests only): unchanged, then a worse model."""
    out, settings = dict(first_run), first_run["settings"]
    out["again"] = _run(settings, GOOD)
    out["versions_after_again"] = R.pushed_versions(settings.push_base)
    out["worse"] = _run(settings, WORSE)
    out["versions_after_worse"] = R.pushed_versions(settings.push_base)
    return out


def test_first_run_blesses_and_pushes_a_servable_model(first_run):
    runs = first_run
    s, first = runs["settings"], runs["first"]
    assert set(first.states.values()) == {"COMPLETE"}, first.states
    # the ExampleGen built the three splits from the raw folder, with its accounting beside them
    import json

    examples = first.uri(P.EXAMPLE_GEN, "examples")
    summary = json.load(open(os.path.join(examples, "summary.json")))
    assert summary["written_per_split"] == SIZES and summary["rejected"] == 0
    assert summary["root"] == os.path.join(s.raw_root, "1") and summary["span"] == 1
    assert summary["beam_options"] == s.beam_args      # the pipeline's beam_pipeline_args reached it
    assert os.path.isfile(os.path.join(examples, "dead_letters.jsonl"))
    assert first.blessed is True and first.pushed is True
    versions = runs["versions_after_first"]
    assert len(versions) == 1
    version_dir = os.path.join(s.push_base, versions[0])
    assert first.pushed_destination == version_dir
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    sigs = R.check_pushed_model(version_dir)
    assert set(sigs[MD.SERVING_SIGNATURE]) >= {MD.PROBABILITIES, MD.UNCERTAINTY, MD.PROBABILITIES_FULL}
    assert set(sigs[MD.IMAGE_SIGNATURE]) >= {MD.PROBABILITIES, MD.UNCERTAINTY}
    # The pushed model answers serialized tf.Examples with [B, L] and [B, NUM_FINDINGS].
    import tensorflow as tf

    from cxr_tfp.input import list_files

    raw = next(iter(tf.data.TFRecordDataset(list_files(os.path.join(examples, "Split-test")),
                                            compression_type="GZIP").batch(5)))
    fn = tf.saved_model.load(version_dir).signatures[MD.SERVING_SIGNATURE]
    pred = fn(**{MD.EXAMPLES_INPUT: raw})
    assert pred[MD.PROBABILITIES].shape == (5, len(SYNTHETIC_FINDINGS))
    assert pred[MD.PROBABILITIES_FULL].shape == (5, F.NUM_FINDINGS)
    p = pred[MD.PROBABILITIES].numpy()
    assert np.all((p >= 0) & (p <= 1))
    # TFMA: macro AUROC above the floor, per-finding AUROCs and counts, sliced by view and dataset.
    metrics = R.read_metrics(first.uri(P.EVALUATOR, "evaluation"))
    assert {"overall", "dataset=synthetic"} <= set(metrics)
    assert any(k.startswith("view=") for k in metrics)
    overall = metrics["overall"]
    assert overall["macro_auc"] >= LOWER_BOUND
    assert overall["n"] == SIZES["test"]
    per_finding = [overall[k] for k in overall if k.startswith("auc/")]
    assert len(per_finding) == len(SYNTHETIC_FINDINGS)
    assert overall["macro_auc"] == pytest.approx(np.mean(per_finding), abs=1e-6)
    assert "macro_auc_diff" not in overall  # no baseline on the first run
    assert R.validation_failures(first.uri(P.EVALUATOR, "evaluation")) == []  # TFMA reports only
    # The blessing gate decided: the macro over the findings with enough positives, its 95% interval
    # (patient bootstrap) above the floor; the same numbers in the outcome summary.
    from pipeline.blessing_gate import read_gate
    from pipeline.report import format_outcome, outcome

    gate = read_gate(first.uri(P.BLESSING_GATE, "blessing"))
    assert gate["blessed"] is True and gate["reason"].startswith("blessed: macro AUROC")
    assert gate["images"] == SIZES["test"] and gate["baseline"] is None
    assert len(gate["counted"]) + len(gate["left_out"]) == len(SYNTHETIC_FINDINGS)
    assert all(c["positives"] >= GATE_MIN and c["negatives"] >= GATE_MIN for c in gate["counted"])
    assert LOWER_BOUND <= gate["ci_low"] <= gate["macro_auroc"] <= gate["ci_high"] <= 1.0
    text = format_outcome(outcome(s.resolved_metadata_path)).splitlines()
    assert "blessed: yes" in text and f"pushed: {versions[0]}" in text
    assert any(line.startswith("data      : span 1 of synthetic") for line in text), text


@pytest.mark.slow  # two more LocalDagRunner runs
def test_unchanged_rerun_uses_the_tfx_cache(runs):
    first, again = runs["first"], runs["again"]
    for node in (P.EXAMPLE_GEN, P.STATISTICS_GEN, P.SCHEMA_GEN, P.EXAMPLE_VALIDATOR,
                 P.ANOMALIES_GATE, P.TRAINER):
        assert again.states[node] == "CACHED", (node, again.states)
    # The cached Trainer hands over the very model of the first run: no retraining.
    assert again.uri(P.TRAINER, "model") == first.uri(P.TRAINER, "model")
    # Evaluated against itself as baseline: no drop, so blessed; but it is already served: no push.
    metrics = R.read_metrics(again.uri(P.EVALUATOR, "evaluation"))["overall"]
    assert metrics["macro_auc_diff"] == pytest.approx(0.0, abs=1e-9)
    assert again.blessed is True
    assert again.pushed is False
    assert runs["versions_after_again"] == runs["versions_after_first"]


@pytest.mark.slow
def test_worse_model_is_not_blessed_and_pushes_nothing(runs):
    worse = runs["worse"]
    assert worse.states[P.TRAINER] == "COMPLETE"  # new training options -> a new model
    assert worse.blessed is False
    assert worse.pushed is False
    assert runs["versions_after_worse"] == runs["versions_after_again"]
    evaluation = worse.uri(P.EVALUATOR, "evaluation")
    overall = R.read_metrics(evaluation)["overall"]
    assert overall["macro_auc_diff"] < -MAX_DROP
    from pipeline.blessing_gate import read_gate

    gate = read_gate(worse.uri(P.BLESSING_GATE, "blessing"))
    assert gate["blessed"] is False and gate["baseline"]["difference"] < -MAX_DROP
    assert "against the last blessed model" in gate["reason"], gate["reason"]


def test_lineage_leads_from_the_pushed_version_to_the_raw_folder(first_run):
    from cxr_tfp.privacy import salt_fingerprint
    from pipeline import lineage as L
    from pipeline.example_gen import tables_checksum

    s, first = first_run["settings"], first_run["first"]
    version = first_run["versions_after_first"][0]
    info = L.lineage(R._store(s.resolved_metadata_path), version)
    assert info["raw_root"] == os.path.join(s.raw_root, "1") and info["span"] == 1
    assert info["dataset"] == "synthetic"
    assert info["label_tables_sha256"] == tables_checksum(__import__("pathlib").Path(s.raw_root) / "1")
    assert info["salt_fingerprint"] == salt_fingerprint()
    assert info["examples"]["uri"] == first.uri(P.EXAMPLE_GEN, "examples")
    assert info["examples"]["written"] == sum(SIZES.values())
    assert info["model"] == first.uri(P.TRAINER, "model")
    assert info["blessing"]["blessed"] is True and info["blessing"]["baseline_model"] is None
    assert [(e["node"], e["state"]) for e in info["executions"]] == [
        (P.EXAMPLE_GEN, "COMPLETE"), (P.TRAINER, "COMPLETE"), (P.BLESSING_GATE, "COMPLETE"),
        (P.PUSHER, "COMPLETE")]
    assert info["pushed_destination"] == os.path.join(s.push_base, version)
    text = L.format_lineage(info)
    for needle in (info["raw_root"], info["label_tables_sha256"], info["salt_fingerprint"], "blessed"):
        assert needle in text
    with pytest.raises(LookupError, match="123"):
        L.lineage(R._store(s.resolved_metadata_path), "123")


@pytest.mark.slow  # another LocalDagRunner run
def test_injected_anomaly_stops_the_run_before_training(tmp_path):
    from pipeline.anomalies_gate import DataAnomaliesError

    data = write_splits(str(tmp_path / "data"), {"train": 8, "eval": 4, "test": 4},
                        image_size=IMAGE_SIZE, seed=1, bad_view_in="eval")
    settings = configs.PipelineSettings(output_root=str(tmp_path / "out"), input="tfrecords",
                                        data_root=data)
    with pytest.raises(DataAnomaliesError) as err:
        _run(settings, GOOD)
    msg = str(err.value)
    assert "split 'eval'" in msg and "view:" in msg and "split 'train'" not in msg
    run = R.latest_run(settings.resolved_metadata_path)
    assert run.states[P.EXAMPLE_VALIDATOR] == "COMPLETE"
    assert run.states[P.ANOMALIES_GATE] == "FAILED"
    assert P.TRAINER not in run.states and P.PUSHER not in run.states
    assert R.pushed_versions(settings.push_base) == []
