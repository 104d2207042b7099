"""The pipeline's settings store, the raw-folder refusals, and the blessing gate's rule (no runs)."""
import json
import os

import numpy as np
import pytest

import pipeline  # noqa: F401  (Keras 3 pin before tfx)
from pipeline import configs
from pipeline.blessing_gate import GateOptions, judge


# ------------------------------------------------------------------------------------ settings
def test_settings_given_at_create_persist_whatever_the_run_environment_holds(tmp_path):
    path = str(tmp_path / "pipeline" / "settings.json")
    created = configs.PipelineSettings.load(path, environ={
        "CXR_TFP_RAW_ROOT": "rel/raw", "CXR_TFP_DATASET": "nih", "CXR_TFP_PIPELINE_NAME": "hospital",
        "CXR_TFP_TRAIN_CONFIG": "configs/x.yaml", "CXR_TFP_GATE_MIN_POSITIVES": "12",
        "CXR_TFP_BEAM_ARGS": "--direct_num_workers=2", "HOME": "/ignored"})
    created.save(path)
    stored = json.load(open(path))
    assert stored == {"raw_root": os.path.abspath("rel/raw"), "dataset": "nih",
                      "pipeline_name": "hospital", "train_config_path": os.path.abspath("configs/x.yaml"),
                      "gate_min_positives": 12, "beam_args": ["--direct_num_workers=2"]}
    # a run with an empty environment gets the same settings, each said to come from the file
    run = configs.PipelineSettings.load(path, environ={})
    assert (run.raw_root, run.dataset, run.pipeline_name, run.gate_min_positives) == (
        os.path.abspath("rel/raw"), "nih", "hospital", 12)
    assert run.source("dataset") == f"settings file {path}" and run.source("output_root") == "default"
    lines = configs.summary_lines(run)
    assert f"[settings file {path}]" in lines[0] and "hospital" in lines[0]
    assert lines[2].startswith(f"training config : {os.path.abspath('configs/x.yaml')} (as written)")
    # a variable left in the run's shell does not move a saved setting: it is ignored, and said so
    stale = configs.PipelineSettings.load(path, environ={"CXR_TFP_DATASET": "dicom",
                                                         "CXR_TFP_RAW_ROOT": "/demo_out/raw",
                                                         "CXR_TFP_PIPELINE_NAME": "hospital"})
    assert (stale.dataset, stale.raw_root) == ("nih", os.path.abspath("rel/raw"))
    assert stale.source("dataset") == f"settings file {path}"
    assert sorted(stale.ignored) == ["CXR_TFP_DATASET", "CXR_TFP_RAW_ROOT"]  # the same value repeated is no news
    assert any(line.startswith("ignored         : ") and "CXR_TFP_DATASET" in line and "CXR_TFP_RAW_ROOT" in line
               for line in configs.summary_lines(stale))
    # a setting the file does not hold may be set for one run, and is labelled so
    once = configs.PipelineSettings.load(path, environ={"CXR_TFP_GATE_MIN_NEGATIVES": "3"})
    assert once.gate_min_negatives == 3 and once.source("gate_min_negatives") == "environment CXR_TFP_GATE_MIN_NEGATIVES"
    # `tfx pipeline update` (saving) replaces saved values with the environment's
    updated = configs.PipelineSettings.load(path, environ={"CXR_TFP_DATASET": "dicom"}, saving=True)
    assert updated.dataset == "dicom" and updated.source("dataset") == "environment CXR_TFP_DATASET"
    assert json.load(open(path))["dataset"] == "nih"


def test_a_settings_file_with_an_unknown_key_or_bad_json_is_one_line(tmp_path):
    bad = tmp_path / "settings.json"
    bad.write_text('{"raw_rot": "/x"}')
    with pytest.raises(ValueError, match=r"settings.json: unknown setting 'raw_rot'"):
        configs.PipelineSettings.load(str(bad), environ={})
    bad.write_text('{"raw_root": ')
    with pytest.raises(ValueError, match="settings.json: not valid JSON"):
        configs.PipelineSettings.load(str(bad), environ={})


def test_the_training_config_follows_the_dataset_and_the_users_yaml_wins(tmp_path):
    from cxr_tfp.labels import NIH_FINDINGS, SYNTHETIC_FINDINGS

    demo = configs.PipelineSettings()
    assert demo.train_config_source()[0] == configs.DEFAULT_TRAIN_CONFIG
    assert demo.findings() == SYNTHETIC_FINDINGS
    nih = configs.PipelineSettings(dataset="nih")
    cfg = nih.train_config_dict()
    assert (cfg["backbone"], cfg["image_size"]) == ("densenet121", 224)
    assert nih.findings() == NIH_FINDINGS
    assert '"findings": "nih"' in nih.train_config_source()[2]   # what the pipeline set, printed
    mine = tmp_path / "mine.yaml"
    mine.write_text("backbone: tiny\nimage_size: 64\nfindings: nih\nstage1_epochs: 4\naugment: true\n")
    user = configs.PipelineSettings(dataset="nih", train_config_path=str(mine))
    cfg = user.train_config_dict()
    assert (cfg["backbone"], cfg["stage1_epochs"], cfg["augment"]) == ("tiny", 4, True)


def test_tfx_pipeline_create_is_recognised_from_the_clis_own_argv():
    from pipeline.local_runner import creating_pipeline

    assert creating_pipeline(["/v/bin/python", "/v/bin/tfx", "pipeline", "create", "--engine", "local"])
    assert creating_pipeline(["/v/bin/python", "/v/bin/tfx", "pipeline", "update"])
    assert not creating_pipeline(["/v/bin/python", "/v/bin/tfx", "run", "create"])
    assert not creating_pipeline(["/v/bin/python", "pipeline/local_runner.py"])


# ------------------------------------------------------------------------------ raw folder checks
def test_missing_empty_and_spanless_raw_roots_are_refused_in_one_line(tmp_path):
    s = configs.PipelineSettings(raw_root=str(tmp_path / "raw"), dataset="nih")
    msg = configs.check_raw_root(s)
    assert msg.startswith(f"raw root {tmp_path / 'raw'} does not exist") and "\n" not in msg
    assert "one folder per span" in msg and "Data_Entry_2017" in msg
    (tmp_path / "raw").mkdir()
    assert "is empty" in configs.check_raw_root(s)
    (tmp_path / "raw" / "Data_Entry_2017.csv").write_text("x")
    (tmp_path / "raw" / "images").mkdir()
    msg = configs.check_raw_root(s)
    assert "has no span folder matching {SPAN}" in msg and "Data_Entry_2017.csv" in msg
    (tmp_path / "raw" / "1").mkdir()
    (tmp_path / "raw" / "12").mkdir()
    assert configs.check_raw_root(s) == f"span folder {tmp_path / 'raw' / '12'} is empty: expected " \
        f"{configs.DATASET_LAYOUTS['nih']} in it"
    (tmp_path / "raw" / "12" / "Data_Entry_2017.csv").write_text("x")
    assert configs.check_raw_root(s) is None
    flat = configs.PipelineSettings(raw_root=str(tmp_path / "raw" / "12"), dataset="nih", span_folder=None)
    assert configs.check_raw_root(flat) is None
    dated = configs.PipelineSettings(raw_root=str(tmp_path / "raw"), span_folder="{YYYY}-{MM}-{DD}")
    assert "no span folder matching {YYYY}-{MM}-{DD}" in configs.check_raw_root(dated)


def test_the_local_runner_refuses_before_any_component(tmp_path):
    from cxr_tfp.cli import UsageError
    from pipeline.local_runner import run

    s = configs.PipelineSettings(output_root=str(tmp_path / "out"), raw_root=str(tmp_path / "none"))
    with pytest.raises(UsageError, match="does not exist"):
        run(s)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ the gate's rule
def _split(n_patients, prevalence, seed, signal):
    """Two images per patient; scores = signal * label + noise, per finding."""
    rng = np.random.default_rng(seed)
    n = 2 * n_patients
    labels = (rng.random((n, len(prevalence))) < np.asarray(prevalence)).astype(float)
    scores = 1 / (1 + np.exp(-(signal * (2 * labels - 1) + rng.normal(size=labels.shape))))
    groups = np.repeat([f"p{i}" for i in range(n_patients)], 2)
    return labels, scores, np.ones_like(labels), groups


OPTS = GateOptions(lower_bound=0.6, max_drop=0.01, n_resamples=200)
FINDINGS = ("Atelectasis", "Effusion", "Mass", "Emphysema")


def test_a_near_chance_model_on_a_small_split_is_refused():
    labels, scores, mask, groups = _split(13, [0.5, 0.4, 0.3, 0.0], seed=0, signal=0.35)
    d = judge(FINDINGS, labels, scores, mask, groups, OPTS)
    assert d["blessed"] is False and d["reason"].startswith("refused:")
    # Emphysema (no positive) is left out with its counts, never averaged in as AUROC 0
    assert {"finding": "Emphysema", "positives": 0, "negatives": 26} in d["left_out"]


def test_too_few_findings_with_enough_positives_is_refused_with_that_reason():
    labels, scores, mask, groups = _split(6, [0.3, 0.3, 0.2, 0.1], seed=1, signal=3.0)
    d = judge(FINDINGS, labels, scores, mask, groups, OPTS)
    assert d["blessed"] is False and d["macro_auroc"] is None
    assert d["reason"].startswith("refused: too few positives to judge: 0 of 4 findings have >= 10 "
                                  "positives and >= 10 negatives among the 12 test images (6 patients)")
    assert len(d["left_out"]) == 4 and d["counted"] == []


def test_a_clear_model_is_blessed_and_a_drop_against_the_baseline_is_refused():
    labels, scores, mask, groups = _split(60, [0.4, 0.3, 0.3, 0.02], seed=2, signal=1.0)
    d = judge(FINDINGS, labels, scores, mask, groups, OPTS)
    assert d["blessed"] is True, d["reason"]
    assert [c["finding"] for c in d["counted"]] == ["Atelectasis", "Effusion", "Mass"]
    assert OPTS.lower_bound <= d["ci_low"] < d["macro_auroc"] < d["ci_high"]
    # the interval is the one `evaluate` reports (cxr_tfp.metrics.auroc_with_ci, same seed)
    from cxr_tfp.metrics import auroc_with_ci

    ref = auroc_with_ci(labels[:, :3], scores[:, :3], mask[:, :3], groups, 200, 0)["macro"]
    assert (d["macro_auroc"], d["ci_low"], d["ci_high"]) == (ref["auroc"], ref["ci_low"], ref["ci_high"])
    better = 1 / (1 + np.exp(-(6.0 * (2 * labels - 1))))
    worse = judge(FINDINGS, labels, scores, mask, groups, OPTS, baseline_probs=better)
    assert worse["blessed"] is False and "against the last blessed model" in worse["reason"]
    assert worse["baseline"]["difference"] < -OPTS.max_drop
    same = judge(FINDINGS, labels, scores, mask, groups, OPTS, baseline_probs=scores)
    assert same["blessed"] is True and same["baseline"]["difference"] == 0.0


# ------------------------------------------------------------------------------ the outcome summary
def test_the_outcome_summary_says_blessed_and_pushed_on_lines_of_their_own(tmp_path):
    from pipeline.report import format_outcome, save_outcome

    labels, scores, mask, groups = _split(6, [0.3, 0.3, 0.2, 0.1], seed=1, signal=3.0)
    gate = judge(FINDINGS, labels, scores, mask, groups, OPTS)
    o = {"run_id": "r1", "states": {}, "blessed": False, "pushed": None, "why_not_pushed": "not blessed",
         "data": {"span": 1, "root": "/raw/1", "dataset": "nih", "inputs": 24, "rejected": 0,
                  "examples": {"train": 19, "eval": 2, "test": 3},
                  "annotated": {"train": {"gaze": 0, "boxes": 2, "any": 2}, "eval": {}, "test": {}}},
         "training": {"final_stage": "stage1", "stage2_skipped": "no annotated example",
                      "train_examples": 19, "annotated_examples": 0,
                      "stage1": {"macro_auroc": 0.5, "num_eval": 2}},
         "gate": gate}
    lines = format_outcome(o).splitlines()
    assert lines[0] == "=== outcome of run r1"
    assert "train 19, eval 2, test 3 examples; annotated: 2 (gaze 0, boxes 2)" in lines[1]
    assert "stage 2 skipped (no annotated example)" in lines[2]
    assert lines[-3:] == ["blessed: no", "pushed: no", "  (not blessed)"]
    assert any(l.startswith("decision  : refused: too few positives to judge") for l in lines)
    assert any(l.startswith("  left out, < 10 positives or < 10 negatives (4): Atelectasis (") for l in lines)
    o.update(blessed=True, pushed="1796230000")
    assert format_outcome(o).splitlines()[-2:] == ["blessed: yes", "pushed: 1796230000"]
    path = save_outcome(o, str(tmp_path))
    assert open(path).read() == open(tmp_path / "outcome.txt").read() == format_outcome(o) + "\n"
