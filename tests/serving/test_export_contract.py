"""Contract tests of the REAL export (cxr_tfp.export) as TF Serving uses it.

(1) load the SavedModel and call each signature exactly as TF Serving would (serialized tf.Example
batch; encoded image bytes); (2) the warm-up file parses as PredictionLogs whose requests succeed;
(3) round trips of the client through a server (stand-in, or real tensorflow_model_server).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from cxr_tfp import client, features
from cxr_tfp import model_dir
from cxr_tfp.labels import FINDINGS
from serving.standin import ServedModel, find_versions

WARMUP = os.path.join("assets.extra", "tf_serving_warmup_requests")


@pytest.fixture(scope="module")
def export_dir(export_base) -> str:
    return find_versions(export_base)[1]


@pytest.fixture(scope="module")
def loaded(export_dir):
    return tf.saved_model.load(export_dir)


@pytest.fixture(scope="module")
def labels(export_dir):
    return [ln.strip() for ln in Path(export_dir, "assets", model_dir.LABELS_ASSET).read_text()
            .splitlines() if ln.strip()]


def _radiograph(seed: int, size: int = 80) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 120 + 60 * np.sin(xx / (7 + seed)) * np.cos(yy / 11)
    return np.clip(base + rng.normal(0, 15, (size, size)), 0, 255).astype(np.uint8)


def _example(img: np.ndarray) -> bytes:
    rec = features.ExampleRecord(image=img, labels=np.ones(features.NUM_FINDINGS, np.float32),
                                 label_mask=np.ones(features.NUM_FINDINGS, np.float32),
                                 patient_key="p", example_key="e", dataset="synthetic")
    return features.to_example(rec).SerializeToString()


def test_assets_match_outputs(export_dir, loaded, labels):
    thr = json.loads(Path(export_dir, "assets", model_dir.THRESHOLDS_ASSET).read_text())
    assert labels and set(labels) <= set(FINDINGS)
    assert set(thr) == set(labels)
    assert all(0.0 < float(v["threshold"]) < 1.0 for v in thr.values())
    assert all(v["source"] in ("chosen", "fallback", "fixed", "unknown") for v in thr.values())
    out = loaded.signatures[model_dir.IMAGE_SIGNATURE](
        **{model_dir.IMAGES_INPUT: tf.constant([features.encode_png(_radiograph(0))])})
    assert out[model_dir.PROBABILITIES].shape == (1, len(labels))


def test_signature_defs_are_the_serving_contract(export_dir):
    sm = ServedModel("cxr_tfp", 1, export_dir, warmup=False)
    for sig, key in ((model_dir.SERVING_SIGNATURE, model_dir.EXAMPLES_INPUT),
                     (model_dir.IMAGE_SIGNATURE, model_dir.IMAGES_INPUT)):
        sd = sm.signature_defs[sig]
        assert list(sd.inputs) == [key]
        assert sd.inputs[key].dtype == tf.string.as_datatype_enum
        assert [d.size for d in sd.inputs[key].tensor_shape.dim] == [-1]
        for k in (model_dir.PROBABILITIES, model_dir.UNCERTAINTY):
            assert sd.outputs[k].dtype == tf.float32.as_datatype_enum
    assert model_dir.PROBABILITIES_FULL in sm.signature_defs[model_dir.SERVING_SIGNATURE].outputs


def test_both_signatures_as_tf_serving_calls_them(loaded, labels):
    imgs = [_radiograph(i) for i in range(3)]
    pngs = [features.encode_png(im) for im in imgs]
    ex = loaded.signatures[model_dir.SERVING_SIGNATURE](
        **{model_dir.EXAMPLES_INPUT: tf.constant([_example(im) for im in imgs])})
    im = loaded.signatures[model_dir.IMAGE_SIGNATURE](**{model_dir.IMAGES_INPUT: tf.constant(pngs)})
    p, u = ex[model_dir.PROBABILITIES].numpy(), ex[model_dir.UNCERTAINTY].numpy()
    assert p.shape == u.shape == (3, len(labels))
    assert ((p >= 0) & (p <= 1)).all() and (u >= 0).all()
    # Same pixels through either signature give the same answer (deterministic export).
    np.testing.assert_allclose(im[model_dir.PROBABILITIES].numpy(), p, atol=1e-5)
    np.testing.assert_allclose(im[model_dir.UNCERTAINTY].numpy(), u, atol=1e-5)
    full = ex[model_dir.PROBABILITIES_FULL].numpy()
    assert full.shape == (3, features.NUM_FINDINGS)
    for j, name in enumerate(labels):
        np.testing.assert_allclose(full[:, FINDINGS.index(name)], p[:, j], atol=1e-6)
    others = [i for i, n in enumerate(FINDINGS) if n not in labels]
    assert np.all(full[:, others] == 0)


def test_jpeg_bytes_accepted_and_batch_composition_irrelevant(loaded):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_radiograph(5), mode="L").save(buf, format="JPEG", quality=95)
    fn = loaded.signatures[model_dir.IMAGE_SIGNATURE]
    pngs = [features.encode_png(_radiograph(i)) for i in range(3)]
    batch = fn(**{model_dir.IMAGES_INPUT: tf.constant(pngs + [buf.getvalue()])})
    alone = fn(**{model_dir.IMAGES_INPUT: tf.constant(pngs[1:2])})
    # TF Serving's batcher merges requests: a row's answer must not depend on its neighbours.
    np.testing.assert_allclose(batch[model_dir.PROBABILITIES].numpy()[1],
                               alone[model_dir.PROBABILITIES].numpy()[0], atol=1e-5)
    assert np.isfinite(batch[model_dir.PROBABILITIES].numpy()[3]).all()


def test_warmup_file_parses_and_requests_succeed(export_dir, loaded):
    path = os.path.join(export_dir, WARMUP)
    assert os.path.isfile(path), "export must write assets.extra/tf_serving_warmup_requests"
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    assert records
    sigs = set()
    for raw in records:
        entry = prediction_log_pb2.PredictionLog.FromString(raw)
        assert entry.HasField("predict_log")
        req = entry.predict_log.request
        sig = req.model_spec.signature_name or model_dir.SERVING_SIGNATURE
        fn = loaded.signatures[sig]
        args = {k: tf.constant(tf.make_ndarray(v)) for k, v in req.inputs.items()}
        assert set(args) == set(fn.structured_input_signature[1])
        out = fn(**args)
        n = int(next(iter(args.values())).shape[0])
        assert n > 0 and out[model_dir.PROBABILITIES].shape[0] == n
        sigs.add(sig)
    assert sigs == {model_dir.SERVING_SIGNATURE, model_dir.IMAGE_SIGNATURE}
    # The stand-in replays it at load, as TF Serving does.
    assert ServedModel("cxr_tfp", 1, export_dir).warmup_count == len(records)


def test_client_round_trip_on_real_export(export_server, export_base, labels, shared_data):
    _, address = export_server
    files = [str(p) for p in sorted((shared_data / "nih-sample" / "images").glob("*.png"))[:2]]
    files.append(str(shared_data / "dicom" / "Fake_MONOHR1.dcm"))
    for sig in (model_dir.IMAGE_SIGNATURE, model_dir.SERVING_SIGNATURE):
        remote = client.predict_files(address, files, signature=sig, model_dir=export_base)
        local = client.predict_files_local(export_base, files, signature=sig)
        for r, l in zip(remote, local):
            assert [f["finding"] for f in r["findings"]] == labels
            assert r["threshold_source"] == "model" and r["version"] == 1
            np.testing.assert_allclose([f["probability"] for f in r["findings"]],
                                       [f["probability"] for f in l["findings"]], atol=1e-5)
            np.testing.assert_allclose([f["uncertainty"] for f in r["findings"]],
                                       [f["uncertainty"] for f in l["findings"]], atol=1e-5)
    table = client.format_table(remote)
    assert all(Path(f).name in table for f in files) and labels[0] in table


def test_empty_batch_is_rejected_in_process(loaded):
    # Under TF Serving the model itself must refuse an empty batch (the stand-in also checks first).
    for sig, key in ((model_dir.IMAGE_SIGNATURE, model_dir.IMAGES_INPUT),
                     (model_dir.SERVING_SIGNATURE, model_dir.EXAMPLES_INPUT)):
        with pytest.raises(tf.errors.InvalidArgumentError):
            loaded.signatures[sig](**{key: tf.constant([], tf.string)})


def test_client_needs_no_model_files_for_the_image_signature(export_server, labels, shared_data):
    """Over gRPC alone (no model_dir, no --labels) the names and thresholds come from the response."""
    _, address = export_server
    files = [str(sorted((shared_data / "nih-sample" / "images").glob("*.png"))[0])]
    (res,) = client.predict_files(address, files, signature=model_dir.IMAGE_SIGNATURE)
    assert [f["finding"] for f in res["findings"]] == labels
    assert res["threshold_source"] == "model"
