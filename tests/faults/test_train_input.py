"""Training refuses input that can only give a useless model, before any training starts."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from cxr_tfp import features as F
from cxr_tfp.train import main
from tests.pipeline.synthetic_records import make_record, write_splits

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_splits(str(tmp_path_factory.mktemp("records")), {"train": 24, "eval": 8, "test": 8})


def _copy(data, tmp_path):
    dst = tmp_path / "records"
    shutil.copytree(data, dst)
    return dst


def _write(path, records):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for r in records:
            w.write(F.to_example(r).SerializeToString())


def _run(d, tmp_path, capsys):
    rc = main(["--data", str(d), "--out", str(tmp_path / "run"), "--backbone", "tiny", "--image-size", "32",
               "--stage1-epochs", "1", "--stage2-epochs", "0", "--batch-size", "8"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1, err[-2000:]
    return rc, lines[0]


def test_truncated_shard_anywhere_is_named_before_training(data, tmp_path, capsys):
    d = _copy(data, tmp_path)
    # a second train shard whose tail is cut (a copy interrupted mid-file): only its LAST record is bad
    blob = (d / "train" / "part-0.tfrecord.gz").read_bytes()
    (d / "train" / "part-1.tfrecord.gz").write_bytes(blob[: len(blob) - 200])
    rc, line = _run(d, tmp_path, capsys)
    assert rc == 2 and "part-1.tfrecord.gz: truncated or corrupt GZIP TFRecord file" in line
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_corrupt_bytes_inside_a_shard_are_named(data, tmp_path, capsys):
    d = _copy(data, tmp_path)
    p = d / "eval" / "part-0.tfrecord.gz"
    blob = bytearray(p.read_bytes())
    mid = len(blob) // 2
    blob[mid:mid + 64] = bytes(64)
    p.write_bytes(bytes(blob))
    rc, line = _run(d, tmp_path, capsys)
    assert rc == 2 and "eval/part-0.tfrecord.gz: truncated or corrupt" in line


def test_no_labelled_training_example_is_refused(data, tmp_path, capsys):
    d = _copy(data, tmp_path)
    rng = np.random.default_rng(0)
    recs = []
    for i in range(8):
        r = make_record(rng, i, 32, "train")
        recs.append(F.ExampleRecord(**{**r.__dict__, "label_mask": np.zeros(F.NUM_FINDINGS, np.float32)}))
    _write(d / "train" / "part-0.tfrecord.gz", recs)
    rc, line = _run(d, tmp_path, capsys)
    assert rc == 2 and "none of the 8 examples has a known label" in line


def test_empty_eval_split_is_refused(data, tmp_path, capsys):
    d = _copy(data, tmp_path)
    _write(d / "eval" / "part-0.tfrecord.gz", [])  # what the build writes for an empty split
    rc, line = _run(d, tmp_path, capsys)
    assert rc == 2 and "eval split" in line and "is empty" in line


def test_a_finding_without_positive_is_a_warning(data, tmp_path):
    from cxr_tfp.train import check_useful

    scan = {"num_examples": 4, "known": np.array([4.0, 4.0, 0.0]), "positives": np.array([3.0, 0.0, 0.0])}
    assert check_useful(["A", "B", "C"], scan, 2, "t", "e") == [
        "no training example has a known label for C: it is not learnt",
        "no positive training example for B: the model cannot learn it"]


# ------------------------------------------------------------------ outputs: locked, never half-written
def test_a_second_training_into_the_same_out_is_refused(data, tmp_path, capsys):
    from cxr_tfp.staging import OutputLock

    with OutputLock(tmp_path / "run", "training"):
        rc, line = _run(data, tmp_path, capsys)
    assert rc == 1 and "is being written by another training: pid" in line


def test_a_failed_export_leaves_the_previous_savedmodel_intact(tmp_path, monkeypatch):
    import hashlib

    import tensorflow as tf

    from cxr_tfp.config import TrainConfig
    from cxr_tfp.export import export_saved_model
    from cxr_tfp.model import build_model

    model = build_model(TrainConfig(backbone="tiny", image_size=32, findings=["Mass", "Effusion"],
                                    latent_dim=4, hidden_dim=8, num_samples=2))
    d = tmp_path / "saved_model"
    export_saved_model(model, str(d))

    def snap():
        return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(d.rglob("*")) if p.is_file()}

    before = snap()

    def dies_half_way(module, path, signatures=None):
        (tmp_path / "marker").write_text(path)
        with open(f"{path}/saved_model.pb", "wb") as fh:
            fh.write(b"half")
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(tf.saved_model, "save", dies_half_way)
    with pytest.raises(OSError):
        export_saved_model(model, str(d))
    assert snap() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker", "saved_model"]  # no staging left
    # a folder holding something else than a SavedModel is refused, not replaced
    (d / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to replace"):
        export_saved_model(model, str(d))


def _train_process(data, out, stage1_epochs: int, stage2_epochs: int):
    """(command, cwd, env) of a tiny ``python -m cxr_tfp.train`` run in its own process."""
    import os
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "cxr_tfp.train", "--data", str(data), "--out", str(out), "--backbone", "tiny",
           "--image-size", "32", "--stage1-epochs", str(stage1_epochs), "--stage2-epochs", str(stage2_epochs),
           "--batch-size", "8"]
    return cmd, repo, dict(os.environ, PYTHONPATH=str(repo), TF_CPP_MIN_LOG_LEVEL="3")


@pytest.mark.slow
def test_kill_9_during_training_resumes_and_finishes(data, tmp_path):
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    cmd, repo, env = _train_process(data, out, stage1_epochs=60, stage2_epochs=1)
    p = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 300 and p.poll() is None:
        if list((out / "checkpoints").rglob("checkpoint")):  # written once a checkpoint is complete
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert list((out / "checkpoints").rglob("checkpoint")), p.stderr.read().decode()[-2000:]
    assert not (out / "model.keras").exists()
    q = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert q.returncode == 0, q.stderr[-3000:]
    import re

    m = re.search(r"stage1: epochs (\d+)\.\.60 \(resumed\)", q.stderr)
    assert m and 1 < int(m.group(1)) <= 60, q.stderr[-1500:]
    assert (out / "model.keras").is_file() and (out / "saved_model" / "saved_model.pb").is_file()
    left = [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] + \
        [x.name for x in out.iterdir() if x.name.startswith(".")]
    assert left == [], left


@pytest.mark.slow
def test_kill_9_during_the_final_export_keeps_the_finished_model(data, tmp_path):
    """A finished run's model.keras and SavedModel survive a kill -9 of a re-run while it re-exports."""
    import hashlib
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    cmd, repo, env = _train_process(data, out, stage1_epochs=1, stage2_epochs=0)
    first = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]

    def snap():
        files = [out / "model.keras"] + sorted(p for p in (out / "saved_model").rglob("*") if p.is_file())
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    before = snap()
    p = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marks = [out / ".model.partial.keras", out / ".saved_model.staging"]
    t0 = time.monotonic()
    while time.monotonic() - t0 < 300 and p.poll() is None and not any(m.exists() for m in marks):
        time.sleep(0.002)
    hit = any(m.exists() for m in marks)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert hit, "the re-run finished before the kill"
    assert snap() == before
    last = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stderr[-2000:]
    assert not [x.name for x in out.iterdir() if x.name.startswith(".")]
