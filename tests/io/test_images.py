"""PNG/JPEG decoding, rejection of bad files, resizing geometry."""
import io

import numpy as np
import pytest
from PIL import Image

from cxr_tfp.io import (DecodeError, MissingFileError, NotChestXrayError, decode_image, load_image, prepare_image,
                        read_bytes, resize_to_square)


def _png(arr, mode=None):
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_grey_png_round_trips():
    arr = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(48, 64)
    out = decode_image(_png(arr))
    assert out.source_format == "png" and np.array_equal(out.pixels, arr)


def test_16bit_png_is_scaled_to_8bit():
    arr = np.linspace(0, 4095, 64 * 64).astype(np.uint16).reshape(64, 64)
    out = decode_image(_png(arr)).pixels
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_grey_stored_as_rgb_is_accepted_but_a_colour_picture_is_not():
    grey = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    assert decode_image(_png(np.stack([grey] * 3, -1))).pixels.shape == (32, 32)
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 0] = 200
    with pytest.raises(NotChestXrayError, match="colour"):
        decode_image(_png(colour))


def test_jpeg_decodes():
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(buf, format="JPEG")
    out = decode_image(buf.getvalue())
    assert out.source_format == "jpeg" and abs(int(out.pixels.mean()) - 128) <= 2


def test_truncated_png_is_a_decode_error():
    data = _png(np.random.default_rng(1).integers(0, 255, (128, 128), dtype=np.uint8))
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize("data,match", [(b"", "empty"), (b"hello, this is a text file" * 10, "not an image")])
def test_non_images_are_decode_errors(data, match):
    with pytest.raises(DecodeError, match=match):
        decode_image(data)


def test_tiny_image_is_rejected():
    with pytest.raises(NotChestXrayError, match="too small"):
        decode_image(_png(np.zeros((8, 8), np.uint8)))


def test_missing_file_error_names_no_path(tmp_path):
    with pytest.raises(MissingFileError) as e:
        read_bytes(tmp_path / "p12345" / "secret.png")
    assert "p12345" not in str(e.value) and "secret" not in str(e.value)


@pytest.mark.parametrize("mode", ["stretch", "crop", "pad"])
def test_resize_modes_give_the_stored_square(mode):
    arr = np.zeros((300, 500), np.uint8)
    arr[:, 250:] = 255
    out, geo = resize_to_square(arr, 64, mode)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    x, _ = geo.map_xy(250.0, 0.0)
    assert float(x) == pytest.approx(32.0, abs=0.01)   # the edge stays in the middle
    assert out[32, 40] > 200 and out[32, 20] < 50


def test_prepare_image_from_path(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(_png(np.full((100, 80), 77, np.uint8)))
    out = prepare_image(p, 32)
    assert out.shape == (32, 32) and int(out.mean()) == 77
    assert load_image(p).pixels.shape == (100, 80)


def test_real_nih_png(shared_data):
    p = sorted((shared_data / "nih-sample" / "images").glob("*.png"))[0]
    out = load_image(p)
    assert out.pixels.shape == (1024, 1024) and out.pixels.dtype == np.uint8
