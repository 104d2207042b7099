"""Image preprocessing shared by training, export signatures, evaluation and the client.

Model input: float32 ``[H, W, 1]`` in ``[0, 1]``, resized with bilinear filtering. The same TF ops
run inside the exported SavedModel, so a served image is preprocessed exactly as in training.

Hostile input (the serving signature takes bytes from the network), checked before decoding:

- only PNG and JPEG are accepted (by magic bytes): anything else is ``INVALID_ARGUMENT`` with a
  clear message, never a raw-bytes error;
- the pixel limit (:data:`cxr_tfp.io.limits.DEFAULT_MAX_PIXELS` unless given) is checked on the
  width x height read from the header (PNG ``IHDR``; JPEG start-of-frame via
  ``tf.io.extract_jpeg_shape``, which parses the header only), so a decompression bomb costs nothing;
- colour rule, the same as the ingestion (:func:`cxr_tfp.io.images._to_uint8_grey`): a grey image
  stored as RGB(A) is converted to its grey value; a *colour* picture (mean ``|R-G| + |G-B|`` above
  :data:`cxr_tfp.io.images.COLOUR_TOLERANCE` on the 0-255 scale) is rejected; an alpha channel is
  dropped;
- 16-bit rule, the same as the ingestion and the predictor (:func:`cxr_tfp.io.images.stretch_to_uint8`):
  a 16-bit grey PNG (what hospitals export) is stretched from its own min..max to 0..255 and rounded
  to 8 bits, not rescaled by its bit depth (a 12-bit image in a 16-bit file would come out nearly
  black); 16-bit colour PNGs keep their high byte in both (Pillow and ``tf.io.decode_png``).
"""
from __future__ import annotations

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


def _max_pixels(max_pixels):
    from cxr_tfp.io.limits import max_pixels_default

    return int(max_pixels_default() if max_pixels is None else max_pixels)


def encoded_image_size(encoded):
    """``(height, width)`` int64 of PNG/JPEG bytes from the header alone; INVALID_ARGUMENT otherwise."""
    import tensorflow as tf

    head = tf.strings.substr(encoded, 0, 24)
    padded = head + tf.constant(b"\x00" * 24)  # short inputs: fixed offsets stay in range
    is_png = tf.strings.substr(padded, 0, 8) == PNG_MAGIC
    is_jpeg = tf.strings.substr(padded, 0, 3) == JPEG_MAGIC

    def png_hw():
        b = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 16, 8), tf.uint8), tf.int64)
        be = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64)
        return tf.stack([tf.reduce_sum(b[4:8] * be), tf.reduce_sum(b[0:4] * be)])

    def jpeg_hw():
        return tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64)

    with tf.control_dependencies([tf.debugging.assert_equal(
            is_png | is_jpeg, True, message="image: not a PNG or JPEG file (by its first bytes)")]):
        return tf.cond(is_png, png_hw, jpeg_hw)


def decode_image_tensor(encoded, size: int, max_pixels=None):
    """Decode PNG/JPEG bytes (scalar string tensor) to float32 ``[size, size, 1]`` in [0, 1] (TF ops).

    The in-graph model input; :func:`cxr_tfp.io.decode_image` is the TensorFlow-free file decoder.

    Raises ``InvalidArgumentError`` (TF Serving: INVALID_ARGUMENT) for a non-PNG/JPEG input, an
    image whose header announces more than ``max_pixels`` pixels, or a colour picture.
    """
    import tensorflow as tf

    from cxr_tfp.io.images import COLOUR_TOLERANCE

    limit = _max_pixels(max_pixels)
    hw = encoded_image_size(encoded)
    pixels = hw[0] * hw[1]
    size_ok = tf.debugging.assert_less_equal(
        pixels, tf.constant(limit, tf.int64),
        message=f"image: more pixels than the limit of {limit} (width x height from the header); "
                f"rejected before decoding")
    with tf.control_dependencies([size_ok]):
        img = tf.cond(is_png_grey16(encoded), lambda: _decode_grey16(encoded),
                      lambda: tf.io.decode_image(encoded, channels=0, expand_animations=False, dtype=tf.uint8))
    img.set_shape([None, None, None])
    img = _grey(img, COLOUR_TOLERANCE)
    img = tf.image.resize(tf.cast(img, tf.float32) / 255.0, [size, size], method="bilinear",
                          antialias=True)
    return tf.clip_by_value(img, 0.0, 1.0)


def is_png_grey16(encoded):
    """True for a PNG whose IHDR says bit depth 16, colour type 0 (grey): read from the header only."""
    import tensorflow as tf

    head = tf.strings.substr(encoded, 0, 26) + tf.constant(b"\x00" * 26)
    depth_type = tf.io.decode_raw(tf.strings.substr(head, 24, 2), tf.uint8)
    return tf.logical_and(tf.equal(tf.strings.substr(head, 0, 8), PNG_MAGIC),
                          tf.reduce_all(tf.equal(depth_type, tf.constant([16, 0], tf.uint8))))


def _decode_grey16(encoded):
    """16-bit grey PNG -> uint8 [H, W, 1] by the 16-bit rule (module docstring): float64 and
    round-half-to-even, exactly as numpy does it in the ingestion."""
    import tensorflow as tf

    x = tf.cast(tf.io.decode_png(encoded, channels=1, dtype=tf.uint16), tf.float64)
    lo, hi = tf.reduce_min(x), tf.reduce_max(x)
    span = tf.maximum(hi - lo, 1.0)
    out = tf.where(hi > lo, tf.round((x - lo) / span * 255.0), tf.zeros_like(x))
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _grey(img, tolerance: float):
    """uint8 [H, W, C] -> [H, W, 1] by the colour rule (module docstring)."""
    import tensorflow as tf

    channels = tf.shape(img)[-1]

    def from_rgb():
        rgb = tf.cast(img[..., :3], tf.float32)
        spread = tf.reduce_mean(tf.abs(rgb[..., 0] - rgb[..., 1]) + tf.abs(rgb[..., 1] - rgb[..., 2]))
        ok = tf.debugging.assert_less_equal(
            spread, tf.constant(tolerance, tf.float32),
            message="image: colour picture (a chest X-ray must be grey)")
        with tf.control_dependencies([ok]):
            return tf.cast(tf.round(tf.image.rgb_to_grayscale(rgb)), tf.uint8)

    return tf.cond(channels >= 3, from_rgb, lambda: img[..., :1])


def check_serialized_examples(examples):
    """Assert that each string is framed like a serialized ``tf.Example`` before it is parsed.

    ``tf.io.parse_example`` quotes the raw input in its error message, so garbage bytes came back as
    an undecodable (UNKNOWN) error and echoed the request. A serialized Example is empty or starts
    with field 1 (``0x0A``) followed by a varint length that spans exactly the rest of the bytes;
    random bytes fail this with near certainty, and the error names no byte of the input.
    """
    import tensorflow as tf

    def one(s):
        n = tf.strings.length(s, unit="BYTE")
        head = tf.cast(tf.io.decode_raw(tf.strings.substr(s + tf.constant(b"\x00" * 6), 0, 6), tf.uint8),
                       tf.int64)
        cont = head[1:6] >= 128
        # varint: 7 bits per byte while the high bit is set (at most 5 bytes for a 32-bit length)
        nbytes = tf.minimum(tf.argmin(tf.cast(cont, tf.int64), output_type=tf.int64) + 1, 5)
        weights = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.range(0, 35, 7, dtype=tf.int64))
        used = tf.cast(tf.range(5, dtype=tf.int64) < nbytes, tf.int64)
        length = tf.reduce_sum(tf.bitwise.bitwise_and(head[1:6], 127) * weights * used)
        return tf.logical_or(tf.equal(n, 0),
                             tf.logical_and(tf.equal(head[0], 10), tf.equal(1 + nbytes + length, tf.cast(n, tf.int64))))

    ok = tf.map_fn(one, examples, fn_output_signature=tf.bool)
    framed = tf.debugging.assert_equal(tf.reduce_all(ok), True,
                                       message="examples: input is not a serialized tf.Example")
    with tf.control_dependencies([framed]):
        return _check_example_structure(examples)


# tf.Example's nesting (tensorflow/core/example/{example,feature}.proto): message -> its fields.
_EXAMPLE_LEVELS = (
    ("tensorflow.Example", ("features",)),
    ("tensorflow.Features", ("feature",)),
    ("tensorflow.Features.FeatureEntry", ("key", "value")),
    ("tensorflow.Feature", ("bytes_list", "float_list", "int64_list")),
)
_LEAVES = (("tensorflow.BytesList", "string"), ("tensorflow.FloatList", "float32"),
           ("tensorflow.Int64List", "int64"))


def _check_example_structure(examples):
    """Decode every level of each tf.Example with ``tf.io.decode_proto`` before ``parse_example`` sees it.

    Why: a crafted message that passes the framing check but is malformed inside made
    ``parse_example`` quote its bytes in the error (it can carry identifiers, and the quote broke the
    error's UTF-8). ``decode_proto`` fails on the same messages with ``DATA_LOSS`` "Failed to consume
    entire buffer", naming the op (``examples_not_a_serialized_tf_Example_<level>``), never a byte.
    """
    import tensorflow as tf

    def flat(decoded, i):
        v, n = decoded.values[i], decoded.sizes[:, i]
        return tf.boolean_mask(v, tf.sequence_mask(n, tf.shape(v)[1]))

    def padded(msgs):      # decode_proto refuses an empty batch; b"" is a valid empty message
        return tf.concat([msgs, tf.constant([b""])], axis=0)

    level = tf.reshape(examples, [-1])
    lists, decoded = None, []
    for depth, (message, fields) in enumerate(_EXAMPLE_LEVELS):
        d = tf.io.decode_proto(padded(level), message, list(fields), [tf.string] * len(fields),
                               name=f"examples_not_a_serialized_tf_Example_{depth}")
        decoded.append(d.sizes)
        if message == "tensorflow.Feature":
            lists = [flat(d, i) for i in range(3)]
        else:
            level = flat(d, len(fields) - 1)      # the nested message (FeatureEntry: its value)
    for lst, (leaf, dtype) in zip(lists, _LEAVES):
        decoded.append(tf.io.decode_proto(padded(lst), leaf, ["value"], [tf.as_dtype(dtype)],
                                          name=f"examples_not_a_serialized_tf_Example_{leaf.split('.')[-1]}").sizes)
    # the values themselves (not only shapes) are consumed, so no decode can be pruned from the graph
    return tf.debugging.assert_non_negative(tf.add_n([tf.reduce_sum(x) for x in decoded]),
                                            message="examples: input is not a serialized tf.Example")


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
