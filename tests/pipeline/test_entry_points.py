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
                           "--patients", "150"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    for n in range(1, 6):
        assert f"=== [{n}/5]" in proc.stdout and f"--- [{n}/5] done in" in proc.stdout
    assert "blessed: True" in proc.stdout
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
    from pipeline import run_report as R

    from cxr_tfp.datasets.synthetic import generate

    # the raw folder, as a user drops it: span 1 of the synthetic dataset (the demo's settings)
    generate(tmp_path / "raw" / "1", n_patients=150, image_size=configs.DEMO_IMAGE_SIZE,
             contrast=configs.DEMO_SYNTHETIC_CONTRAST)
    env = _env(LOCAL_HOME=str(tmp_path / "tfx_home"), CXR_TFP_RAW_ROOT=str(tmp_path / "raw"),
               CXR_TFP_OUTPUT_ROOT=str(tmp_path / "out" / "tfx"), CXR_TFP_PIPELINE_NAME="cli-test")
    tfx_cli = os.path.join(os.path.dirname(sys.executable), "tfx")
    create = subprocess.run([tfx_cli, "pipeline", "create", "--engine", "local", "--pipeline_path",
                             "pipeline/local_runner.py"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert create.returncode == 0, (create.stdout + create.stderr)[-3000:]
    assert 'Pipeline "cli-test" created successfully' in create.stdout
    run = subprocess.run([tfx_cli, "run", "create", "--engine", "local", "--pipeline_name",
                          "cli-test"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    summary = R.latest_run(str(tmp_path / "out" / "tfx" / "metadata" / "cli-test" / "metadata.db"))
    assert summary.states["ExampleGen"] == "COMPLETE" and summary.states["Trainer"] == "COMPLETE"
    assert summary.blessed is True
    # serving_root defaults to <output_root>/serving
    assert R.pushed_versions(str(tmp_path / "out" / "tfx" / "serving" / configs.SERVING_MODEL_NAME))
