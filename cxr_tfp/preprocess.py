"""Image preprocessing shared by training, export signatures, evaluation and the client.

Model input: float32 ``[H, W, 1]`` in ``[0, 1]``, resized with bilinear filtering. The same TF ops
run inside the exported SavedModel, so a served image is preprocessed exactly as in training.
"""
from __future__ import annotations


def decode_image_tensor(encoded, size: int):
    """Decode PNG/JPEG bytes (scalar string tensor) to float32 ``[size, size, 1]`` in [0, 1] (TF ops).

    The in-graph model input; :func:`cxr_tfp.io.decode_image` is the TensorFlow-free file decoder.
    """
    import tensorflow as tf

    img = tf.io.decode_image(encoded, channels=1, expand_animations=False, dtype=tf.uint8)
    img.set_shape([None, None, 1])
    img = tf.image.resize(tf.cast(img, tf.float32) / 255.0, [size, size], method="bilinear",
                          antialias=True)
    return tf.clip_by_value(img, 0.0, 1.0)


def decode_map(encoded, size: int):
    """Decode an annotation PNG (possibly empty bytes) to float32 ``[size, size, 1]`` in [0, 1].

    Empty bytes (no annotation of that kind) decode to zeros.
    """
    import tensorflow as tf

    def _zeros():
        return tf.zeros([size, size, 1], tf.float32)

    def _decode():
        return decode_image_tensor(encoded, size)

    return tf.cond(tf.strings.length(encoded) > 0, _decode, _zeros)
