"""The README's hospital example, run exactly as written on real NIH images (slow).

A NIH-layout raw folder made from ``../shared/data/nih-sample`` (its label table and its 24 real
images, without the box table: a hospital's images carry no boxes) as span 1; the README's
commands, in a fresh shell whose environment holds only what the README sets (PATH to the project's
virtualenv, as ``source .venv/bin/activate`` gives, and a HOME of its own for the tfx CLI), with the
example's ``/data/...`` paths pointed at this test's folders. Twenty-four images leave two or
three in the test split: the gate must refuse for too few positives, say so in the outcome
summary, and push nothing.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

from pipeline import configs

REPO = configs.REPO_ROOT
MARKER = "<!-- hospital-example:"


def readme_example() -> str:
    """The bash block after the hospital-example marker in README.md."""
    text = (REPO / "README.md").read_text()
    after = text[text.index(MARKER):]
    block = re.search(r"```bash\n(.*?)```", after, re.S)
    return block.group(1)


def test_the_readme_example_names_the_training_config_and_runs_the_report():
    example = readme_example()
    assert "CXR_TFP_TRAIN_CONFIG=configs/hospital_first_run.yaml" in example
    assert "tfx run create --engine local --pipeline_name cxr-tfp" in example
    assert example.strip().splitlines()[-1] == "python -m pipeline.report"
    assert (REPO / "configs" / "hospital_first_run.yaml").is_file()


@pytest.mark.slow  # a DenseNet-121 pipeline run on real images (~10 min on 2 busy cores)
def test_the_readme_hospital_example_ends_refused_for_too_few_positives(tmp_path, shared_data):
    raw = tmp_path / "nih-drops" / "1"
    (raw / "images").mkdir(parents=True)
    shutil.copy(shared_data / "nih-sample" / "Data_Entry_2017_v2020.csv", raw / "Data_Entry_2017.csv")
    for png in (shared_data / "nih-sample" / "images").glob("*.png"):
        shutil.copy(png, raw / "images" / png.name)
    # The commands run from a checkout: the runner (its settings.json lands beside it) and the config.
    checkout = tmp_path / "checkout"
    (checkout / "pipeline").mkdir(parents=True)
    (checkout / "configs").mkdir()
    shutil.copy(REPO / "pipeline" / "local_runner.py", checkout / "pipeline")
    shutil.copy(REPO / "configs" / "hospital_first_run.yaml", checkout / "configs")
    script = (readme_example().replace("/data/nih-drops", str(tmp_path / "nih-drops"))
              .replace("/data/cxr-tfp", str(tmp_path / "cxr-tfp")))
    (tmp_path / "home").mkdir()
    env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin", "HOME": str(tmp_path / "home"),
           "VIRTUAL_ENV": os.path.dirname(os.path.dirname(sys.executable))}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=3600)
    out = proc.stdout
    (tmp_path / "example.log").write_text(out + "\n--- stderr\n" + proc.stderr)
    assert proc.returncode == 0, (out + proc.stderr)[-4000:]
    # create saved the settings; the run (no CXR_TFP_* in its environment) used them
    settings = configs.PipelineSettings.load(str(checkout / "pipeline" / "settings.json"), environ={})
    assert settings.raw_root == str(tmp_path / "nih-drops") and settings.dataset == "nih"
    assert settings.train_config_path == str(checkout / "configs" / "hospital_first_run.yaml")
    run_part = out[out.index("cxr-tfp pipeline run"):]
    assert f"raw dataset     : {tmp_path / 'nih-drops'}/{{SPAN}} (nih;" in run_part
    assert "hospital_first_run.yaml (as written)" in run_part
    # the outcome, at the end of the run and again from python -m pipeline.report
    outcomes = [part for part in out.split("=== outcome of run ")[1:]]
    assert len(outcomes) == 2, out[-3000:]
    for text in outcomes:
        lines = text.splitlines()
        assert any(l.startswith("data      : span 1 of nih") for l in lines), text
        assert any("stage 2 skipped" in l and "no annotated example" in l for l in lines), text
        decision = [l for l in lines if l.startswith("decision  : ")]
        assert decision and decision[0].startswith("decision  : refused: too few positives to judge"), text
        assert "blessed: no" in lines and "pushed: no" in lines
    assert not os.path.exists(tmp_path / "cxr-tfp" / "serving" / configs.SERVING_MODEL_NAME) or \
        not os.listdir(tmp_path / "cxr-tfp" / "serving" / configs.SERVING_MODEL_NAME)
    assert (tmp_path / "cxr-tfp" / "pipelines" / "cxr-tfp" / "outcome.txt").is_file()
    print(outcomes[-1])
