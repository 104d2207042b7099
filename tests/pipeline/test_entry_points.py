"""The user-facing entry points in fresh processes: the demo (main job) and the tfx CLI (slow)."""
import os
import subprocess
import sys

import pytest

from pipeline import configs

REPO = str(configs.REPO_ROOT)


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env.pop("TF_USE_LEGACY_KERAS", None)  # as a user's shell would have it
    return env


@pytest.mark.slow
def test_demo_runs_end_to_end_and_says_where_outputs_are(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "pipeline.demo", "--out", str(out),
                           "--patients", "400"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    for n in range(1, 6):
        assert f"=== [{n}/5]" in proc.stdout and f"--- [{n}/5] done in" in proc.stdout
    assert "blessed: True" in proc.stdout
    # ~80 test images: the gate counts the findings with >= 10 positives and negatives, and blesses
    assert "blessed: yes" in proc.stdout.splitlines() and "=== outcome of run" in proc.stdout
    assert any(line.startswith("decision  : blessed: macro AUROC") for line in proc.stdout.splitlines())
    assert "request: gRPC Predict via cxr_tfp.client" in proc.stdout
    for finding in ("Cardiomegaly", "Effusion", "Mass", "Nodule"):
        assert f"  {finding} " in proc.stdout.split("=== [5/5]")[1]
    where = proc.stdout.split("Where everything is:")[1]
    paths = [line.split()[-1] for line in where.splitlines()
             if line.startswith("  ") and line.split()[-1].startswith(str(out))]
    assert len(paths) >= 8 and all(os.path.exists(p) for p in paths), paths
    versions = os.listdir(out / "serving" / configs.SERVING_MODEL_NAME)
    assert len(versions) == 1 and (out / "serving" / configs.SERVING_MODEL_NAME / versions[0] /
                                   "saved_model.pb").is_file()


@pytest.mark.slow
def test_tfx_cli_creates_and_runs_the_local_pipeline(tmp_path):
    """Settings given to `tfx pipeline create` reach `tfx run create` with every CXR_TFP_* removed."""
    import json
    import shutil

    from pipeline import run_report as R

    from cxr_tfp.datasets.synthetic import generate

    # the raw folder, as a user drops it: span 1 of the synthetic dataset (the demo's settings)
    generate(tmp_path / "raw" / "1", n_patients=150, image_size=configs.DEMO_IMAGE_SIZE,
             contrast=configs.DEMO_SYNTHETIC_CONTRAST)
    # the runner in a checkout of its own: its settings.json lands beside it, not in the repo
    checkout = tmp_path / "checkout"
    (checkout / "pipeline").mkdir(parents=True)
    shutil.copy(os.path.join(REPO, "pipeline", "local_runner.py"), checkout / "pipeline")
    config = tmp_path / "train.yaml"
    config.write_text(open(configs.DEFAULT_TRAIN_CONFIG).read()
                      + "stage1_epochs: 25\naugment: false\nverbose: 0\n")
    base = {k: v for k, v in _env(LOCAL_HOME=str(tmp_path / "tfx_home")).items()
            if not k.startswith("CXR_TFP_")}
    given = dict(CXR_TFP_RAW_ROOT=str(tmp_path / "raw"), CXR_TFP_OUTPUT_ROOT=str(tmp_path / "out" / "tfx"),
                 CXR_TFP_PIPELINE_NAME="cli-test", CXR_TFP_DATASET="synthetic",
                 CXR_TFP_TRAIN_CONFIG=str(config), CXR_TFP_GATE_MIN_POSITIVES="5",
                 CXR_TFP_GATE_MIN_NEGATIVES="5",
                 # 30 test images: this model's macro AUROC (~0.65) has a 95% interval ~0.55-0.77,
                 # whose lower end a floor of 0.6 would refuse; this test is about the settings
                 CXR_TFP_MACRO_AUC_LOWER_BOUND="0.4")
    tfx_cli = os.path.join(os.path.dirname(sys.executable), "tfx")
    create = subprocess.run([tfx_cli, "pipeline", "create", "--engine", "local", "--pipeline_path",
                             "pipeline/local_runner.py"], cwd=checkout, env=dict(base, **given),
                            capture_output=True, text=True, timeout=600)
    assert create.returncode == 0, (create.stdout + create.stderr)[-3000:]
    assert 'Pipeline "cli-test" created successfully' in create.stdout
    saved = json.load(open(checkout / "pipeline" / "settings.json"))
    assert saved["raw_root"] == given["CXR_TFP_RAW_ROOT"] and saved["gate_min_positives"] == 5
    assert saved["macro_auc_lower_bound"] == 0.4
    run = subprocess.run([tfx_cli, "run", "create", "--engine", "local", "--pipeline_name",
                          "cli-test"], cwd=checkout, env=base, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    # the settings block names the saved values and their file; the run ends with its outcome
    assert "pipeline name   : cli-test   [settings file" in run.stdout
    assert f"training config : {config} (as written)" in run.stdout
    assert "blessed: yes" in run.stdout.splitlines() and "=== outcome of run" in run.stdout
    summary = R.latest_run(str(tmp_path / "out" / "tfx" / "metadata" / "cli-test" / "metadata.db"))
    assert summary.states["ExampleGen"] == "COMPLETE" and summary.states["Trainer"] == "COMPLETE"
    assert summary.blessed is True
    # serving_root defaults to <output_root>/serving
    assert R.pushed_versions(str(tmp_path / "out" / "tfx" / "serving" / configs.SERVING_MODEL_NAME))
    assert (tmp_path / "out" / "tfx" / "pipelines" / "cli-test" / "outcome.txt").is_file()
    assert len(run.stdout.splitlines()) < 80, run.stdout   # no protobuf dumps, one line per component


@pytest.mark.slow
def test_tfx_cli_refuses_a_missing_raw_root_in_one_line(tmp_path):
    import shutil

    checkout = tmp_path / "checkout"
    (checkout / "pipeline").mkdir(parents=True)
    shutil.copy(os.path.join(REPO, "pipeline", "local_runner.py"), checkout / "pipeline")
    env = _env(LOCAL_HOME=str(tmp_path / "tfx_home"), CXR_TFP_RAW_ROOT=str(tmp_path / "nowhere"),
               CXR_TFP_DATASET="nih", CXR_TFP_OUTPUT_ROOT=str(tmp_path / "out"))
    tfx_cli = os.path.join(os.path.dirname(sys.executable), "tfx")
    create = subprocess.run([tfx_cli, "pipeline", "create", "--engine", "local", "--pipeline_path",
                             "pipeline/local_runner.py"], cwd=checkout, env=env, capture_output=True,
                            text=True, timeout=600)
    assert create.returncode != 0
    errors = [line for line in create.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: raw root {tmp_path / 'nowhere'} does not exist (nih): expected one "
                      f"folder per span ({tmp_path / 'nowhere'}/1/, {tmp_path / 'nowhere'}/2/, ...; "
                      f"pattern {{SPAN}}), each holding {configs.DATASET_LAYOUTS['nih']}"]
    assert not (tmp_path / "out").exists()
