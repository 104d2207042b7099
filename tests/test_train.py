"""Two-stage training end to end: metrics, artefacts, resume, bad input, tf.distribute."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from cxr_tfp import features as F
from cxr_tfp import model_dir as MD
from cxr_tfp.config import TrainConfig, load_config
from cxr_tfp.model_dir import read_labels
from cxr_tfp.train import main, train_model
from tests.model.synth import make_records, write_dataset, write_split

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_cfg(**kw):
    cfg = load_config(os.path.join(REPO, "configs", "smoke.yaml")).to_dict()
    cfg.update(dict(image_size=32, stage1_epochs=2, stage2_epochs=2, num_samples=4, verbose=0))
    cfg.update(kw)
    return TrainConfig.from_dict(cfg)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data")), n_train=64, n_eval=32, size=32)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    metrics = train_model(small_cfg(), os.path.join(data, "train"), os.path.join(data, "eval"), out)
    return out, metrics


def test_metrics_and_artefacts(trained):
    out, metrics = trained
    assert json.load(open(os.path.join(out, "metrics.json"))) == metrics
    for stage in ("stage1", "stage2"):
        per = metrics[stage]["auroc"]
        assert set(per) == {"Cardiomegaly", "Effusion", "Mass", "Nodule"}
        vals = [v for v in per.values() if v is not None]
        assert vals and all(0.0 <= v <= 1.0 for v in vals)
        assert metrics[stage]["macro_auroc"] == pytest.approx(np.mean(vals))
        assert metrics[stage]["num_eval"] == 32
    assert metrics["stage2_cached_examples"] == metrics["annotated_examples"] > 0
    assert set(metrics["thresholds"]) == set(metrics["findings"])
    assert os.listdir(os.path.join(out, "logs", "stage1"))  # TensorBoard event files
    hist = [json.loads(l) for l in open(os.path.join(out, "history.jsonl"))]
    assert [(h["stage"], h["epoch"]) for h in hist] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert [h["kl_scale"] for h in hist if h["stage"] == 2] == [1.0, 1.0]  # kl_warmup_epochs: 1


def test_keras_and_savedmodel_agree(trained, data):
    from cxr_tfp.model import load_model
    from cxr_tfp.input import make_dataset

    out, metrics = trained
    model = load_model(os.path.join(out, "model.keras"))
    assert model.thresholds == pytest.approx(metrics["thresholds"])
    sm = os.path.join(out, "saved_model")
    assert read_labels(sm) == model.findings
    first = sorted(tf.io.gfile.glob(os.path.join(data, "eval", "*")))[0]   # one file: one order
    raw = next(iter(tf.data.TFRecordDataset([first], compression_type="GZIP").batch(8)))
    got = tf.saved_model.load(sm).signatures[MD.SERVING_SIGNATURE](**{MD.EXAMPLES_INPUT: raw})
    x, _ = next(iter(make_dataset([first], 32, model.findings, 8)))
    ref = model.predict_with_uncertainty(x["image"].numpy())
    np.testing.assert_allclose(got[MD.PROBABILITIES].numpy(), ref[MD.PROBABILITIES], atol=1e-5)


class Killed(Exception):
    """What the kill callback raises: the process 'dies' at an epoch end."""


def kill_after(epochs):
    """A Keras callback that stops the run after ``epochs`` epochs in total (over both stages)."""
    import keras

    class KillAfter(keras.callbacks.Callback):
        seen = 0

        def on_epoch_end(self, epoch, logs=None):
            KillAfter.seen += 1
            if KillAfter.seen >= epochs:
                raise Killed(f"killed after {KillAfter.seen} epochs")

    return KillAfter()


@pytest.mark.slow  # two more trainings; test_checkpoint_restores_... covers the restore itself
def test_resume_continues_without_lost_or_repeated_epochs(data, tmp_path, trained):
    out = str(tmp_path / "run")
    tr, ev = os.path.join(data, "train"), os.path.join(data, "eval")
    with pytest.raises(Killed):
        train_model(small_cfg(), tr, ev, out, callbacks=[kill_after(3)])   # dies inside stage 2
    assert not os.path.exists(os.path.join(out, "model.keras"))
    # the epoch checkpoint of stage 2 was written before the kill: a TF checkpoint after epoch 1
    assert tf.train.latest_checkpoint(os.path.join(out, "checkpoints", "stage2")).endswith("-1")
    stage1 = json.load(open(os.path.join(out, "metrics.json")))["stage1"]
    metrics = train_model(small_cfg(), tr, ev, out)
    hist = [json.loads(l) for l in open(os.path.join(out, "history.jsonl"))]
    assert [(h["stage"], h["epoch"]) for h in hist] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    # the stage-1 result of the interrupted run is kept, not recomputed
    assert metrics["stage1"] == stage1
    assert "stage2" in metrics and os.path.exists(os.path.join(out, "model.keras"))


def test_checkpoint_restores_weights_optimizer_and_epoch(data, tmp_path):
    """A checkpoint restored into a fresh model gives back its variables, Adam's slots and step count."""
    import keras

    from cxr_tfp.model import build_model
    from cxr_tfp.train import StageCheckpoint, stage1_dataset

    cfg = small_cfg(stage1_epochs=1, stage2_epochs=0)
    ckpt_dir = str(tmp_path / "ckpt")
    model = build_model(cfg)
    model.set_stage(1, cfg.freeze)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(stage1_dataset(cfg, os.path.join(data, "train")), epochs=1, verbose=0)
    StageCheckpoint(model, ckpt_dir, chief=True).save(1)

    fresh = build_model(cfg)
    fresh.set_stage(1, cfg.freeze)
    fresh.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert StageCheckpoint(fresh, ckpt_dir, chief=True).restore() == 1
    assert int(fresh.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) > 0
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Adam's moments, in creation order (the second model's variable names carry a suffix)
    assert len(model.optimizer.variables) == len(fresh.optimizer.variables) > 2
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # a non-chief worker saves into a throw-away folder: the chief's folder is untouched
    before = sorted(os.listdir(ckpt_dir))
    StageCheckpoint(model, ckpt_dir, chief=False).save(2)
    assert sorted(os.listdir(ckpt_dir)) == before
    # a checkpoint of another architecture is refused with the checkpoint's name
    other = build_model(small_cfg(latent_dim=4, stage2_epochs=0))
    other.set_stage(1, cfg.freeze)
    other.compile(optimizer=keras.optimizers.Adam(1e-3))
    with pytest.raises(ValueError, match="ckpt-1"):
        StageCheckpoint(other, ckpt_dir, chief=True).restore()


def test_bad_config_fails_before_training(data, tmp_path):
    with pytest.raises(ValueError, match="freeze"):
        train_model({"freeze": "everything"}, data, data, str(tmp_path / "o"))
    assert not os.path.exists(tmp_path / "o")
    rc = main(["--data", data, "--out", str(tmp_path / "o2"), "--config",
               os.path.join(REPO, "configs", "smoke.yaml"), "--latent-dim", "-3"])
    assert rc == 2 and not os.path.exists(tmp_path / "o2")
    rc = main(["--data", str(tmp_path), "--out", str(tmp_path / "o3")])
    assert rc == 2


def test_records_not_matching_the_spec_are_named(data, tmp_path):
    bad = str(tmp_path / "bad.tfrecord.gz")
    with tf.io.TFRecordWriter(bad, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        ex = F.to_example(make_records(1, 32)[0])
        del ex.features.feature[F.LABELS].float_list.value[3:]   # wrong length
        w.write(ex.SerializeToString())
    with pytest.raises(ValueError, match=r"bad\.tfrecord\.gz.*'labels'"):
        train_model(small_cfg(), [bad], os.path.join(data, "eval"), str(tmp_path / "o"))
    plain = str(tmp_path / "plain.tfrecord")
    with open(plain, "wb") as fh:
        fh.write(b"not a tfrecord at all")
    with pytest.raises(ValueError, match="plain.tfrecord"):
        train_model(small_cfg(), [plain], os.path.join(data, "eval"), str(tmp_path / "o"))


def test_without_annotations_stage2_is_skipped_and_the_cli_exits_0(tmp_path, capsys):
    d = tmp_path / "d"
    write_split(str(d / "train"), make_records(16, 32, annotated_fraction=0.0, seed=1))
    write_split(str(d / "eval"), make_records(8, 32, seed=2))
    out = tmp_path / "o"
    # a run refused before it trained anything left its state behind: it must not block this one
    out.mkdir()
    (out / "state.json").write_text(json.dumps({"config": small_cfg(latent_dim=3).to_dict()}))
    rc = main(["--data", str(d), "--out", str(out), "--config", os.path.join(REPO, "configs", "smoke.yaml"),
               "--image-size", "32", "--stage1-epochs", "1", "--stage2-epochs", "2",
               "--num-samples", "2", "--verbose", "0"])
    err = capsys.readouterr()
    assert rc == 0, err.err[-2000:]
    skipped = [l for l in err.err.splitlines() if "stage 2 skipped" in l]
    assert len(skipped) == 1 and "no annotated example" in skipped[0] and "16 training" in skipped[0]
    assert json.loads(err.out.strip().splitlines()[-1])["final_stage"] == "stage1"
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["final_stage"] == "stage1" and "stage2" not in metrics
    assert "nothing to distil" in metrics["stage2_skipped"] and metrics["annotated_examples"] == 0
    assert (out / "saved_model" / "saved_model.pb").is_file()


def test_an_annotation_kind_the_data_lacks_fails_before_training(data, tmp_path):
    gaze_free = write_split(str(tmp_path / "boxes"), make_records(16, 32, annotated_fraction=1.0))
    with pytest.raises(ValueError, match="annotation='gaze'"):
        # every annotated record here has a gaze map: drop it via the mode that needs only boxes
        train_model(small_cfg(annotation="gaze"), _strip_gaze(gaze_free, tmp_path),
                    os.path.join(data, "eval"), str(tmp_path / "o"))
    assert not os.path.exists(tmp_path / "o")


def _strip_gaze(directory, tmp_path):
    out = str(tmp_path / "nogaze.tfrecord.gz")
    with tf.io.TFRecordWriter(out, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for rec in tf.data.TFRecordDataset(tf.io.gfile.glob(directory + "/*"), compression_type="GZIP"):
            ex = tf.train.Example.FromString(rec.numpy())
            ex.features.feature[F.GAZE].bytes_list.value[:] = [b""]
            ex.features.feature[F.HAS_GAZE].int64_list.value[:] = [0]
            w.write(ex.SerializeToString())
    return [out]


DISTRIBUTED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, {repo!r})
    from tests.test_train import small_cfg
    from cxr_tfp.train import train_model, predict_split
    from cxr_tfp.model import load_model
    data, out = sys.argv[1], sys.argv[2]
    res = {{}}
    for name in ("none", "mirrored"):
        cfg = small_cfg(distribute=name, stage1_epochs=1, stage2_epochs=1, augment=False, shuffle=False,
                        stage1_lr=1e-3, stage2_lr=1e-3, prior_kl=0.0)
        m = train_model(cfg, data + "/train", data + "/eval", out + "/" + name)
        model = load_model(out + "/" + name + "/model.keras")
        p = predict_split(model, cfg, [data + "/eval"])[0]
        res[name] = p.tolist()
    from cxr_tfp.train import make_strategy
    from cxr_tfp.model import build_model
    res["replicas"] = make_strategy("mirrored").num_replicas_in_sync
    res["untrained"] = predict_split(build_model(cfg), cfg, [data + "/eval"])[0].tolist()
    print("RESULT" + json.dumps(res))
""")


@pytest.mark.slow  # two trainings in a subprocess
def test_mirrored_strategy_on_two_cpu_devices_matches_single_device(data, tmp_path):
    script = tmp_path / "dist.py"
    script.write_text(DISTRIBUTED.format(repo=REPO))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(script), data, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=600)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    res = json.loads(line[0][6:])
    assert res["replicas"] == 2
    single, mirrored, untrained = (np.array(res[k]) for k in ("none", "mirrored", "untrained"))
    assert single.shape == mirrored.shape == (32, 4)
    # same global batches, same per-example latent noise, globally normalised loss: only float
    # summation order differs (measured max |diff| ~3e-4, while training moved predictions far more)
    np.testing.assert_allclose(mirrored, single, atol=2e-3)
    assert np.abs(single - untrained).max() > 10 * 2e-3


def test_cosine_schedule_spans_each_stage_and_constant_is_a_float():
    from cxr_tfp.train import learning_rate_for

    cfg = small_cfg(stage1_epochs=3, stage2_epochs=2, batch_size=4, stage1_lr=0.01, stage2_lr=0.002,
                    lr_schedule="cosine")
    scan = {"num_examples": 10, "annotated": 5}          # 3 and 2 steps per epoch
    s1, s2 = learning_rate_for(cfg, 1, scan), learning_rate_for(cfg, 2, scan)
    assert float(s1(0)) == pytest.approx(0.01) and float(s1(9)) == pytest.approx(0.0, abs=1e-9)
    assert float(s1(4.5)) == pytest.approx(0.005, rel=1e-5)          # half-way: half the rate
    assert float(s2(0)) == pytest.approx(0.002) and float(s2(4)) == pytest.approx(0.0, abs=1e-9)
    assert float(s2(2)) == pytest.approx(0.001, rel=1e-5)
    assert learning_rate_for(small_cfg(lr_schedule="constant", stage1_lr=0.01), 1, scan) == 0.01


def test_stage_datasets_declare_their_batch_count(data):
    """Keras gets a total for its progress bar (not 1/Unknown); a wrong count fails loudly."""
    from cxr_tfp.train import scan_split, stage1_dataset, stage2_image_dataset

    cfg = small_cfg(batch_size=5)
    files = sorted(str(p) for p in __import__("pathlib").Path(data, "train").glob("*"))
    scan = scan_split(files, cfg.finding_names)
    ds1 = stage1_dataset(cfg, files, scan["num_examples"])
    ds2 = stage2_image_dataset(cfg, files, num_examples=scan["annotated"])
    assert int(ds1.cardinality()) == -(-scan["num_examples"] // 5) == sum(1 for _ in ds1)
    assert int(ds2.cardinality()) == -(-scan["annotated"] // 5) == sum(1 for _ in ds2)
    assert int(stage1_dataset(cfg, files).cardinality()) < 0          # unknown without the scan
    with pytest.raises(tf.errors.FailedPreconditionError, match="expected to contain"):
        for _ in stage1_dataset(cfg, files, scan["num_examples"] + 10):
            pass


DETERMINISTIC = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    from tests.test_train import small_cfg
    from cxr_tfp.train import train_model, predict_split
    from cxr_tfp.model import load_model
    data, out = sys.argv[1], sys.argv[2]
    res = []
    for run in ("a", "b"):
        cfg = small_cfg(deterministic=True, stage1_epochs=2, stage2_epochs=1, seed=3)
        m = train_model(cfg, data + "/train", data + "/eval", out + "/" + run)
        p = predict_split(load_model(out + "/" + run + "/model.keras"), cfg, [data + "/eval"])[0]
        res.append({{"stage1": m["stage1"]["macro_auroc"], "stage2": m["stage2"]["macro_auroc"],
                    "probs": p.tolist()}})
    print("RESULT" + json.dumps(res))
""")


@pytest.mark.slow   # two trainings + exports in a fresh process: ~1-2 min on a shared 2-core machine
def test_fixed_seed_with_op_determinism_trains_the_same_twice(data, tmp_path):
    """The smoke config with ``deterministic: true`` and one seed: two fresh runs give equal metrics and
    equal predictions (own process: op determinism is process-wide)."""
    script = tmp_path / "det.py"
    script.write_text(DETERMINISTIC.format(repo=REPO))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    p = subprocess.run([sys.executable, str(script), data, str(tmp_path / "runs")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = json.loads(p.stdout.split("RESULT", 1)[1])
    assert a["stage1"] is not None and a["stage1"] == b["stage1"] and a["stage2"] == b["stage2"]
    assert np.array_equal(np.asarray(a["probs"]), np.asarray(b["probs"]))
