"""keras-cv augmentation moves image and annotation together."""
import numpy as np
import tensorflow as tf

from cxr_tfp.augment import make_augmenter


def test_image_and_annotation_stay_aligned():
    rng = np.random.default_rng(0)
    img = np.zeros((4, 32, 32, 1), np.float32)
    for i in range(4):
        r, c = rng.integers(4, 20, 2)
        img[i, r:r + 8, c:c + 8, 0] = 1.0
    x = {"image": tf.constant(img), "annotation": tf.constant(np.concatenate([img, img], -1)),
         "has_gaze": tf.ones(4), "has_boxes": tf.ones(4)}
    out = make_augmenter(seed=3, rotation=0.1, shift=0.2, zoom=0.2)(x)
    a, m = out["image"].numpy(), out["annotation"].numpy()
    assert a.shape == (4, 32, 32, 1) and m.shape == (4, 32, 32, 2)
    assert not np.allclose(a, img)                        # something moved
    np.testing.assert_allclose(m[..., :1], a, atol=1e-6)   # ...and the maps moved with it
    np.testing.assert_allclose(m[..., 1:], a, atol=1e-6)
    assert a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(out["has_gaze"].numpy(), 1)
