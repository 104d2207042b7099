"""A tiny hand-made SavedModel with the export contract's signatures (tests only).

Same signature names, input names/dtypes/shapes, output keys and assets as
``cxr_tfp.export.export_saved_model`` writes, with a closed-form "model" so tests can assert values:
for an image whose mean grey level (in [0, 1]) is ``m``, finding ``j`` gets
``probability = sigmoid(WEIGHTS[j] * m + BIASES[j])`` and ``uncertainty = 0.1 * p * (1 - p)``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from cxr_tfp import features
from cxr_tfp import model_dir

LABELS = ("Atelectasis", "Cardiomegaly", "Effusion")
WEIGHTS = np.array([4.0, -4.0, 1.0], np.float32)
BIASES = np.array([-2.0, 2.0, 0.0], np.float32)
THRESHOLDS = {"Atelectasis": 0.5, "Cardiomegaly": 0.6, "Effusion": 0.7}
SIZE = 32


def expected(mean_grey: float) -> tuple:
    """(probabilities, uncertainty) the tiny model gives an image of this mean grey level."""
    p = 1.0 / (1.0 + np.exp(-(WEIGHTS * mean_grey + BIASES)))
    return p, 0.1 * p * (1 - p)


def build(version_dir: str, warmup_requests=None) -> str:
    """Write the tiny SavedModel to ``version_dir`` (+ assets, + optional warm-up PredictionLogs)."""
    import tensorflow as tf

    from cxr_tfp.labels import FINDINGS
    from cxr_tfp.preprocess import decode_image_tensor

    cols = [FINDINGS.index(n) for n in LABELS]

    class Tiny(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(WEIGHTS)
            self.b = tf.Variable(BIASES)

        def _head(self, encoded):
            # Reject an empty batch inside the graph too, so a real tensorflow_model_server (which
            # does not check batch sizes) also answers INVALID_ARGUMENT with a clear message.
            tf.debugging.assert_positive(tf.size(encoded), message="empty batch: send at least one")
            x = tf.map_fn(lambda e: decode_image_tensor(e, SIZE), encoded,
                          fn_output_signature=tf.TensorSpec([SIZE, SIZE, 1], tf.float32))
            m = tf.reduce_mean(x, axis=[1, 2, 3])
            p = tf.sigmoid(m[:, None] * self.w[None] + self.b[None])
            return p, 0.1 * p * (1 - p)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def predict_images(self, images):
            p, u = self._head(images)
            return {model_dir.PROBABILITIES: p, model_dir.UNCERTAINTY: u}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve_examples(self, examples):
            parsed = features.parse_examples(examples)
            p, u = self._head(parsed[features.IMAGE])
            full = tf.transpose(tf.scatter_nd(tf.constant(cols)[:, None], tf.transpose(p),
                                              [features.NUM_FINDINGS, tf.shape(p)[0]]))
            return {model_dir.PROBABILITIES: p, model_dir.UNCERTAINTY: u,
                    model_dir.PROBABILITIES_FULL: full}

    m = Tiny()
    assert model_dir.IMAGES_INPUT == "images" and model_dir.EXAMPLES_INPUT == "examples"
    tf.saved_model.save(m, version_dir, signatures={
        model_dir.SERVING_SIGNATURE: m.serve_examples,
        model_dir.IMAGE_SIGNATURE: m.predict_images})
    assets = os.path.join(version_dir, "assets")
    os.makedirs(assets, exist_ok=True)
    with open(os.path.join(assets, model_dir.LABELS_ASSET), "w") as f:
        f.write("\n".join(LABELS) + "\n")
    with open(os.path.join(assets, model_dir.THRESHOLDS_ASSET), "w") as f:
        json.dump(THRESHOLDS, f)
    if warmup_requests:
        write_warmup(version_dir, warmup_requests)
    return version_dir


def write_warmup(version_dir: str, requests) -> str:
    """Write PredictRequests as TF Serving's warm-up file (TFRecord of PredictionLog)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as w:
        for req in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=req))
            w.write(log.SerializeToString())
    return path
