"""Saliency points where the model demonstrably looks.

The stand-in: a real backbone architecture (DenseNet-121, ResNet-50, the tiny CNN) with fixed
weights - every convolution a positive, centre-peaked average, batch norm the identity - and a head with uniform
attention and positive weights. Images are mean grey (0 after standardisation, the same as the zero
padding) with one bright square, so the output depends only on that square: a faithful explanation
must peak inside it. With the backbones' real padding and strides this catches any offset between
a feature cell and the image region it reads (the bug this file found: cells placed by an even
tiling are off by up to half a cell).
"""
import numpy as np
import pytest

from cxr_tfp import metrics as M
from cxr_tfp.model import CxrModel
from cxr_tfp.model import saliency as S

SIZES = {"densenet121": (64, 96, 128), "resnet50": (64, 96, 128), "tiny": (32, 48, 64)}


def _tent(k: int) -> np.ndarray:
    t = np.minimum(np.arange(1, k + 1), np.arange(k, 0, -1)).astype(float)
    return t / t.sum()


def standin(backbone: str, size: int) -> CxrModel:
    """A CxrModel whose score grows with local brightness, read through the backbone's real geometry."""
    model = CxrModel(backbone=backbone, image_size=size, findings=["Mass"], latent_dim=4, hidden_dim=8,
                     num_samples=2)
    for w in model.backbone.weights:
        name = w.path.split("/")[-1]
        if name in ("kernel", "depthwise_kernel"):   # a positive, centre-peaked (tent) average
            kh, kw = w.shape[0], w.shape[1]
            tent = np.outer(_tent(kh), _tent(kw))
            k = np.broadcast_to(tent[:, :, None, None], w.shape) / float(np.prod(w.shape[2:-1]))
            w.assign(k.astype(np.float32))
        elif name in ("bias", "beta", "moving_mean"):
            w.assign(np.zeros(w.shape, np.float32))
        elif name in ("gamma", "moving_variance"):
            w.assign(np.ones(w.shape, np.float32))
    prior = model.head.prior
    for layer in (prior.pool.score, prior.gauss.hidden, prior.gauss.out):
        layer.kernel.assign(np.full(layer.kernel.shape, 0.0 if layer is prior.pool.score else 1.0, np.float32))
        layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
    # Scale the classifier so the logit stays near 0 (a saturated sigmoid has no gradient).
    probe = np.full((1, size, size, 1), 0.5, np.float32)
    probe[0, : size // 4, : size // 4] = 1.0
    mu, _ = prior(model.features(probe))
    cls = model.head.classifier
    cls.kernel.assign(np.full(cls.kernel.shape, 1.0 / max(float(np.sum(mu)), 1e-6), np.float32))
    cls.bias.assign(np.zeros(cls.bias.shape, np.float32))
    return model


def squares(size: int, side: int, n: int, seed: int):
    """``n`` mean-grey images, each with one bright ``side`` x ``side`` square; their boolean regions."""
    rng = np.random.default_rng(seed)
    images = np.full((n, size, size, 1), 0.5, np.float32)
    regions = np.zeros((n, size, size), bool)
    for i in range(n):
        r, c = rng.integers(0, size - side + 1, 2)
        images[i, r:r + side, c:c + side] = 1.0
        regions[i, r:r + side, c:c + side] = True
    return images, regions


def _side(model) -> int:
    # A square at least one cell wide always contains the receptive-field centre nearest to it.
    step = S.model_geometry(model).y.step
    return int(np.ceil(1.25 * step))


@pytest.mark.parametrize("backbone", ["tiny", pytest.param("densenet121", marks=pytest.mark.slow),
                                      pytest.param("resnet50", marks=pytest.mark.slow)])
def test_grad_cam_peaks_inside_the_only_region_the_output_depends_on(backbone):
    for size in SIZES[backbone]:
        model = standin(backbone, size)
        images, regions = squares(size, _side(model), n=8, seed=size)
        cams = S.grad_cam(model, images, 0)
        assert cams.shape == (8, size, size)
        hits = [M.pointing_game_hit(c, r) for c, r in zip(cams, regions)]
        assert all(hits), f"{backbone} at {size}px: Grad-CAM peak outside the square on images {np.where(~np.array(hits))[0]}"


@pytest.mark.parametrize("backbone", ["tiny", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_even_cell_tiling_misses_the_region(backbone):
    """The test above can fail: placing cells by an even tiling (the old resize) misses the square."""
    size = SIZES[backbone][-1]
    model = standin(backbone, size)
    images, regions = squares(size, _side(model), n=8, seed=size)
    h, w = model.grid_hw
    cams = S.grad_cam(model, images, 0, geometry=S.Geometry.naive(h, w, size))
    hits = [M.pointing_game_hit(c, r) for c, r in zip(cams, regions)]
    assert not all(hits)


def test_geometry_of_known_layers():
    """Receptive-field centres traced through layers with hand-computed answers."""
    import keras

    inp = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(2, 3, strides=2, padding="same")(inp)        # TF pads after: centre 2i + 1.5
    m = keras.Model(inp, x)
    g = S.feature_geometry(m, 32)
    assert (g.y.start, g.y.step, g.y.size) == (1.5, 2.0, 16)
    x = keras.layers.ZeroPadding2D(1)(inp)
    x = keras.layers.Conv2D(2, 3, strides=2)(x)                            # symmetric: centre 2i + 0.5
    x = keras.layers.AveragePooling2D(2)(x)                                # even window: + 0.5 step
    g = S.feature_geometry(keras.Model(inp, x), 32)
    assert (g.y.start, g.y.step, g.y.size) == (1.5, 4.0, 8)


def test_occlusion_and_attention_maps():
    model = standin("tiny", 32)
    images, regions = squares(32, 10, n=4, seed=3)
    occ = S.occlusion(model, images, 0)
    assert occ.shape == (4, 32, 32) and occ.min() >= 0 and np.allclose(occ.max(axis=(1, 2)), 1.0)
    assert all(M.pointing_game_hit(o, r) for o, r in zip(occ, regions))
    att = S.attention_map(model, images)
    # Uniform attention in the stand-in: flat but for the slight fade beyond the outermost cell centres.
    assert att.shape == (4, 32, 32) and att.max() == 1.0 and att.min() > 0.8
    with pytest.raises(IndexError):
        S.occlusion(model, images, 3)
