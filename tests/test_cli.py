"""What every command prints besides its result: one-line usage errors, no TensorFlow start-up noise."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_tfp import cli

REPO = Path(__file__).resolve().parents[1]


def _mains():
    from cxr_tfp import client, evaluate, export, train
    from cxr_tfp.records import build
    from pipeline import demo
    from serving import render_models_config, standin

    return {"build": build.main, "train": train.main, "evaluate": evaluate.main, "client": client.main,
            "export": export.main, "standin": standin.main, "demo": demo.main,
            "render_models_config": render_models_config.main}


def test_a_wrong_choice_is_one_line_with_see_help_and_no_usage_dump(capsys):
    from cxr_tfp.records.build import main

    assert main(["--dataset", "chestxray14", "--root", "r", "--out", "o"]) == 2
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith("error: argument --dataset: invalid choice: 'chestxray14'")
    assert lines[0].endswith("(see --help)")
    assert "usage:" not in out.err + out.out


@pytest.mark.parametrize("name", ["build", "train", "evaluate", "client", "export", "standin", "demo",
                                  "render_models_config"])
def test_every_command_says_error_in_one_line_for_an_unknown_flag(name, capsys):
    assert _mains()[name](["--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and err.rstrip().endswith("(see --help)"), err


def test_help_still_exits_0():
    from cxr_tfp.records.build import main

    assert main(["--help"]) == 0


def test_usage_errors_leave_argparse_unpatched_afterwards():
    import argparse

    before = argparse.ArgumentParser.error
    cli.run(lambda argv: 0, [])
    assert argparse.ArgumentParser.error is before


def test_tensorflow_noise_lines_are_dropped_and_the_rest_kept(capfd):
    with cli.filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1.0 1 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
                    b"E0000 00:00:1.0 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
                    b"I0000 00:00:1.0 1 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n"
                    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild.\n"
                    b"a real message\n")
    assert capfd.readouterr().err == "a real message\n"


@pytest.mark.parametrize("argv, expected", [
    (["python", "-m", "cxr_tfp.evaluate", "--model", "m"], "cxr_tfp.evaluate"),
    (["python", "-u", "-m", "serving.standin"], "serving.standin"),
    (["python", str(REPO / "pipeline" / "local_runner.py")], str(REPO / "pipeline" / "local_runner.py")),
    (["python", "-m", "pytest", "tests"], None),
    (["python", "notebook.py"], None),
    (["python"], None),
])
def test_only_the_projects_entry_points_are_quietened(argv, expected):
    assert cli.entry_point(argv) == expected


def test_debug_keeps_tensorflow_logging(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x", "--debug"])
    assert cli.quiet_tensorflow() is False


def test_transform_legacy_keras_advice_is_dropped_and_other_absl_warnings_pass():
    import pipeline

    from absl import logging as absl_logging

    absl = absl_logging.get_absl_logger()

    def passes(msg, *args):
        return absl.filter(logging.LogRecord("absl", logging.WARNING, "keras_lib.py", 25, msg, args, None))

    # the exact call in tensorflow_transform/keras_lib.py
    assert not passes("TF_USE_LEGACY_KERAS is set to %s, which will not use Keras 2. Tensorflow"
                      " Transform is only compatible with Keras 2. Please set TF_USE_LEGACY_KERAS=1.", "0")
    assert passes("something else worth reading")
    assert os.environ["TF_USE_LEGACY_KERAS"] == "0" and pipeline.LEGACY_KERAS_WARNING


def _run(args, env_extra=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", cli.DEBUG_ENV)}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_a_command_that_loads_tensorflow_prints_only_its_error_line(tmp_path):
    # export imports TensorFlow/Keras before it finds that the model file is missing
    proc = _run(["-m", "cxr_tfp.export", str(tmp_path / "missing.keras"), str(tmp_path / "out")])
    assert proc.returncode == 2, proc.stderr
    assert "cuInit" not in proc.stderr and "To enable the following instructions" not in proc.stderr
    assert "cudart_stub" not in proc.stderr and "absl::InitializeLog" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("error: ")


@pytest.mark.slow
def test_the_pipeline_start_up_does_not_contradict_its_readme():
    proc = _run(["-c", "import pipeline, tfx.v1, tensorflow_transform  # noqa"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Please set TF_USE_LEGACY_KERAS=1" not in proc.stderr
