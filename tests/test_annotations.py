"""Fixations -> heatmaps and boxes/ellipses -> masks, aligned with the stored image."""
import numpy as np
import pytest

from cxr_tfp.annotations import (AnnotationError, Gaze, Region, box_mask, check_region, fixations_from_points,
                                 gaze_heatmap, region_mask)
from cxr_tfp.io.images import Geometry, resize_to_square


def _peak(a):
    i, j = np.unravel_index(int(np.argmax(a)), a.shape)
    return j, i  # x, y


@pytest.mark.parametrize("mode", ["stretch", "crop", "pad"])
def test_heatmap_peak_lands_on_the_fixated_pixel_after_resizing(mode):
    w, h, s = 400, 300, 50
    geo = Geometry(w, h, s, mode)
    g = fixations_from_points([(260.0, 150.0, 1.0)], sigma_px=10.0)
    heat = gaze_heatmap(g, geo)
    assert heat.shape == (s, s) and heat.dtype == np.float32 and heat.max() == pytest.approx(1.0)
    ex, ey = geo.map_xy(260.0, 150.0)
    x, y = _peak(heat)
    assert abs(x + 0.5 - float(ex)) <= 1 and abs(y + 0.5 - float(ey)) <= 1


def test_heatmap_is_duration_weighted():
    geo = Geometry(100, 100, 100)
    g = fixations_from_points([(20, 50, 0.2), (80, 50, 1.0)], sigma_px=4.0)
    heat = gaze_heatmap(g, geo)
    assert heat[50, 80] == pytest.approx(1.0, abs=0.01)
    assert heat[50, 20] == pytest.approx(0.2, abs=0.02)


def test_reflacx_sigma_is_one_degree_from_angular_resolution_and_scales_with_the_image():
    # 40 px per degree on a 1000 px image stored at 100 px: sigma 4 stored px.
    geo = Geometry(1000, 1000, 100)
    g = Gaze(x=np.array([500.0]), y=np.array([500.0]), weight=np.array([1.0]),
             sigma_x=np.array([40.0]), sigma_y=np.array([40.0]))
    heat = gaze_heatmap(g, geo)
    row = heat[50]
    # value one sigma (4 px) from the centre pixel (centre at 50.0 between pixels 49 and 50)
    assert row[53] / row[49] == pytest.approx(np.exp(-0.5 * (3.5 / 4.0) ** 2) / np.exp(-0.5 * (0.5 / 4.0) ** 2), rel=1e-3)


def test_annotation_frame_rescales_coordinates():
    # Coordinates given on a 2000x2000 original, image on disk is 500x500.
    geo = Geometry(500, 500, 50)
    g = fixations_from_points([(1500.0, 500.0, 1.0)], sigma_px=40.0)
    x, y = _peak(gaze_heatmap(g, geo, frame=(2000, 2000)))
    assert (x, y) in {(37, 12), (37, 13), (38, 12), (38, 13)}


def test_fixations_off_the_image_are_dropped_and_all_off_is_an_error():
    geo = Geometry(100, 100, 20)
    g = fixations_from_points([(-5, -5, 1.0), (50, 50, 1.0), (float("nan"), 3, 1.0)], sigma_px=5)
    assert gaze_heatmap(g, geo).max() == pytest.approx(1.0)
    with pytest.raises(AnnotationError, match="none of the"):
        gaze_heatmap(fixations_from_points([(-1, -1, 1.0), (500, 5, 1.0)], sigma_px=5), geo)


def test_box_mask_aligned_with_the_resized_image():
    img = np.zeros((200, 400), np.uint8)
    img[50:100, 200:300] = 255            # a bright block, boxed exactly
    stored, geo = resize_to_square(img, 40, "stretch")
    mask = box_mask([[200, 50, 100, 50]], geo)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    inside = stored[mask > 0]
    outside = stored[mask == 0]
    assert inside.mean() > 200 and outside.mean() < 30


def test_ellipse_mask_is_an_ellipse():
    geo = Geometry(100, 100, 100)
    m = region_mask([Region("ellipse", 20, 40, 80, 60)], geo)
    assert m[50, 50] == 1 and m[50, 21] == 1 and m[41, 50] == 1
    assert m[42, 22] == 0  # the box corner is outside the ellipse
    assert m.sum() == pytest.approx(np.pi * 30 * 10, rel=0.05)


def test_crop_mode_clips_and_pad_mode_keeps_everything():
    wide = Geometry(200, 100, 100, "crop")    # keeps x in [50, 150]
    m = region_mask([Region.from_xywh(0, 0, 60, 100)], wide)
    assert m[:, :10].all() and not m[:, 12:].any()
    pad = Geometry(200, 100, 100, "pad")      # image occupies rows 25..75
    m = region_mask([Region.from_xywh(0, 0, 200, 100)], pad)
    assert m[30, :].all() and not m[10, :].any()


def test_tiny_box_still_marks_a_pixel():
    geo = Geometry(1024, 1024, 16)
    assert region_mask([Region.from_xywh(500, 500, 3, 3)], geo).sum() == 1


@pytest.mark.parametrize("box,match", [
    ((900, 900, 300, 300), "outside"), ((-200, 10, 50, 50), "outside"), ((10, 10, 0, 5), "zero"),
    ((10, float("nan"), 5, 5), "non-numeric"),
])
def test_bad_boxes_are_rejected_with_a_reason(box, match):
    geo = Geometry(1024, 1024, 64)
    with pytest.raises(AnnotationError, match=match):
        check_region(Region.from_xywh(*box), geo)


def test_box_overshooting_by_rounding_is_accepted():
    check_region(Region.from_xywh(1000, 1000, 30, 30), Geometry(1024, 1024, 64))
