"""DICOM decoding: real JPEG Baseline files, MONOCHROME1, LUTs, BitsStored, rejections."""
import numpy as np
import pytest

from cxr_tfp.io import DecodeError, NotChestXrayError, decode_image, load_image
from tests.io.dicom_factory import make_dicom, ramp

REAL = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


@pytest.fixture(scope="module")
def real_pair(shared_data):
    d = shared_data / "dicom"
    return load_image(d / REAL), load_image(d / "Fake_MONOHR1.dcm")


def test_real_jpeg_baseline_dicom_decodes_with_view(real_pair):
    m2, _ = real_pair
    assert m2.source_format == "dicom" and m2.pixels.shape == (1024, 1024) and m2.pixels.dtype == np.uint8
    assert m2.view == "PA" and 100 < m2.pixels.mean() < 220


def test_real_monochrome1_comes_out_inverted(real_pair):
    m2, m1 = real_pair
    diff = m1.pixels.astype(int) + m2.pixels.astype(int) - 255
    assert np.abs(diff).max() <= 1
    assert np.corrcoef(m1.pixels.ravel()[::97], m2.pixels.ravel()[::97])[0, 1] < -0.99


def test_real_dicom_decodes_like_the_same_nih_image(shared_data, real_pair):
    # The DICOM is an NIH image; its content is a chest radiograph (bright body, darker lungs).
    px = real_pair[0].pixels
    assert px[400:600, 150:350].mean() < px[400:600, 450:570].mean() + 60


def test_bits_stored_masks_stray_high_bits():
    arr = ramp()
    noisy = arr | np.uint16(0xF000)          # garbage in the 4 unused high bits
    a = decode_image(make_dicom(arr)).pixels
    b = decode_image(make_dicom(noisy)).pixels
    assert np.array_equal(a, b)


def test_signed_pixels_and_modality_lut():
    arr = (ramp(hi=2000).astype(np.int16) - 1000)
    out = decode_image(make_dicom(arr, signed=True, rescale=(2.0, -100.0))).pixels
    assert out[0, 0] == 0 and out[0, -1] == 255 and np.all(np.diff(out[0].astype(int)) >= 0)


def test_window_center_width_is_applied():
    out = decode_image(make_dicom(ramp(w=101, hi=1000), window=(500, 201))).pixels
    row = out[0].astype(int)       # ramp values 0, 10, ..., 1000
    assert row[:40].max() == 0 and row[61:].min() == 255 and 100 < row[50] < 155


def test_sigmoid_window():
    out = decode_image(make_dicom(ramp(w=101, hi=1000), window=(500, 200), voi_function="SIGMOID")).pixels
    assert out[0, 50] in (127, 128) and out[0, 0] < 10 and out[0, -1] > 245


def test_voi_lut_sequence_is_applied():
    lut = np.concatenate([np.zeros(100), np.linspace(0, 255, 56), np.full(100, 255)]).astype(int)
    out = decode_image(make_dicom(ramp(w=256, hi=255, dtype=np.uint8), bits_stored=8,
                                  voi_lut=(0, 8, lut))).pixels
    assert out[0, 50] == 0 and out[0, 200] == 255 and 0 < out[0, 128] < 255


def test_no_window_uses_min_max():
    out = decode_image(make_dicom(ramp(hi=3000))).pixels
    assert out.min() == 0 and out.max() == 255


def test_rle_compressed_dicom_decodes():
    a = decode_image(make_dicom(ramp())).pixels
    b = decode_image(make_dicom(ramp(), compress_rle=True)).pixels
    assert np.array_equal(a, b)


def test_synthetic_monochrome1_inverted():
    a = decode_image(make_dicom(ramp())).pixels
    b = decode_image(make_dicom(ramp(), photometric="MONOCHROME1")).pixels
    assert np.array_equal(a.astype(int), 255 - b.astype(int))


@pytest.mark.parametrize("kwargs,match", [
    (dict(samples_per_pixel=3, photometric="RGB"), "colour DICOM"),
    (dict(modality="CT"), "Modality CT"),
    (dict(modality="SECRET"), "Modality \\(value not shown\\)"),
    (dict(body_part="HAND"), "not the chest"),
])
def test_non_cxr_dicoms_are_rejected_without_patient_data(kwargs, match):
    arr = np.zeros((32, 32, 3), np.uint8) if kwargs.get("samples_per_pixel") else ramp()
    with pytest.raises(NotChestXrayError, match=match) as e:
        decode_image(make_dicom(arr, patient_id="PAT-SECRET", patient_name="Secret^Name", **kwargs))
    assert "SECRET" not in str(e.value).upper()


def test_truncated_dicom_is_a_decode_error(shared_data):
    data = (shared_data / "dicom" / REAL).read_bytes()
    with pytest.raises(DecodeError):
        decode_image(data[: len(data) // 3])


def test_ids_are_read_for_hashing():
    out = decode_image(make_dicom(ramp(), patient_id="PAT-42", view="AP"))
    assert out.patient_id == "PAT-42" and out.view == "AP" and out.image_id
