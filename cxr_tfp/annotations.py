"""Expert annotations become images aligned with the stored radiograph.

- Gaze fixations -> a duration-weighted sum of 2-D Gaussians (:func:`gaze_heatmap`), evaluated at
  the centres of the stored pixels. Sigma is given in *source* pixels and scaled with the image:
  REFLACX uses one degree of visual angle per fixation (its ``angular_resolution_{x,y}_pixels_per_degree``
  columns); EGD-CXR uses :data:`EGD_SIGMA_PX` = 150 source pixels, the sigma of the dataset
  authors' own heatmap script (``create_heatmap_images_and_or_videos.py``, ``sigma=150`` on the
  original MIMIC DICOM grid, about 5% of its 2544-3056 pixel side).
- Boxes ``[x, y, w, h]`` and ellipses ``(xmin, ymin, xmax, ymax)`` -> a binary mask
  (:func:`region_mask`): a stored pixel is inside when its centre is.

Every function takes a :class:`cxr_tfp.io.Geometry` (how the decoded source image became the stored
square) plus, when the annotation coordinates refer to a differently sized copy of the image (e.g.
REFLACX coordinates on the original DICOM while the user has a downsampled JPEG), the ``frame``
size those coordinates refer to.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from cxr_tfp.io.images import Geometry

EGD_SIGMA_PX = 150.0           # EGD-CXR: sigma in original-image pixels (see module docstring)
BOUNDS_TOLERANCE = 0.02        # a box may overshoot the image by 2% of its side (rounding) before it is "outside"
MIN_GAZE_SIGMA_STORED = 0.5    # never narrower than half a stored pixel (keeps tiny images sane)


class AnnotationError(ValueError):
    """An annotation that cannot be placed on its image (reason fit for a dead letter)."""


@dataclasses.dataclass
class Region:
    """One box or ellipse in annotation-frame pixels, plus where it came from."""

    kind: str                   # "box" or "ellipse"
    x0: float
    y0: float
    x1: float
    y1: float
    source: str = ""            # e.g. "BBox_List_2017.csv:12" (for dead letters)
    finding: str = ""

    @classmethod
    def from_xywh(cls, x, y, w, h, **kw) -> "Region":
        return cls("box", float(x), float(y), float(x) + float(w), float(y) + float(h), **kw)


@dataclasses.dataclass
class Gaze:
    """Fixations of one reading of one image, in annotation-frame pixels."""

    x: np.ndarray                               # [N]
    y: np.ndarray                               # [N]
    weight: np.ndarray                          # [N] duration (seconds) of each fixation
    sigma_x: Optional[np.ndarray] = None        # [N] per-fixation sigma in frame pixels, or None ...
    sigma_y: Optional[np.ndarray] = None
    sigma_px: Optional[float] = None            # ... a single sigma in frame pixels ...
    sigma_frac: Optional[float] = None          # ... or a fraction of the frame's longer side
    source: str = ""

    def __len__(self) -> int:
        return int(np.asarray(self.x).shape[0])


def _frame_scale(geo: Geometry, frame: Optional[Tuple[float, float]]) -> Tuple[float, float]:
    """Factor from annotation-frame pixels to decoded-image pixels."""
    if not frame:
        return 1.0, 1.0
    fw, fh = float(frame[0]), float(frame[1])
    if fw <= 0 or fh <= 0:
        raise AnnotationError(f"invalid annotation frame size {frame}")
    return geo.src_w / fw, geo.src_h / fh


def check_region(region: Region, geo: Geometry, frame: Optional[Tuple[float, float]] = None) -> None:
    """Raise :class:`AnnotationError` when a region is degenerate or lies outside its image."""
    vals = (region.x0, region.y0, region.x1, region.y1)
    if not all(np.isfinite(v) for v in vals):
        raise AnnotationError(f"{region.kind} has a non-numeric coordinate")
    if region.x1 <= region.x0 or region.y1 <= region.y0:
        raise AnnotationError(f"{region.kind} has zero or negative width/height")
    fw, fh = (float(frame[0]), float(frame[1])) if frame else (float(geo.src_w), float(geo.src_h))
    tx, ty = BOUNDS_TOLERANCE * fw, BOUNDS_TOLERANCE * fh
    if region.x0 < -tx or region.y0 < -ty or region.x1 > fw + tx or region.y1 > fh + ty:
        raise AnnotationError(
            f"{region.kind} [{region.x0:.0f},{region.y0:.0f},{region.x1:.0f},{region.y1:.0f}] lies outside "
            f"the {fw:.0f}x{fh:.0f} image")


def region_mask(regions: Sequence[Region], geo: Geometry,
                frame: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """Union of boxes/ellipses as a uint8 [S, S] mask (1 inside). Regions must pass :func:`check_region`."""
    size = geo.size
    mask = np.zeros((size, size), np.uint8)
    fx, fy = _frame_scale(geo, frame)
    centres = np.arange(size, dtype=np.float64) + 0.5
    for r in regions:
        sx0, sy0 = geo.map_xy(r.x0 * fx, r.y0 * fy)
        sx1, sy1 = geo.map_xy(r.x1 * fx, r.y1 * fy)
        sx0, sx1 = float(min(sx0, sx1)), float(max(sx0, sx1))
        sy0, sy1 = float(min(sy0, sy1)), float(max(sy0, sy1))
        if sx1 <= 0 or sy1 <= 0 or sx0 >= size or sy0 >= size:
            continue  # entirely cropped away by the resize mode
        if r.kind == "ellipse":
            cx, cy = (sx0 + sx1) / 2.0, (sy0 + sy1) / 2.0
            ax, ay = max((sx1 - sx0) / 2.0, 0.5), max((sy1 - sy0) / 2.0, 0.5)
            inside = ((centres[None, :] - cx) / ax) ** 2 + ((centres[:, None] - cy) / ay) ** 2 <= 1.0
        else:
            inside = ((centres[None, :] >= sx0) & (centres[None, :] <= sx1)
                      & (centres[:, None] >= sy0) & (centres[:, None] <= sy1))
        if not inside.any():  # thinner than a stored pixel: mark the pixel under its centre
            j = int(np.clip((sx0 + sx1) / 2.0, 0, size - 1))
            i = int(np.clip((sy0 + sy1) / 2.0, 0, size - 1))
            inside = np.zeros((size, size), bool)
            inside[i, j] = True
        mask |= inside.astype(np.uint8)
    return mask


def box_mask(boxes_xywh: Sequence[Sequence[float]], geo: Geometry,
             frame: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """Convenience: ``[[x, y, w, h], ...]`` -> uint8 mask (checks bounds)."""
    regions = [Region.from_xywh(*b) for b in boxes_xywh]
    for r in regions:
        check_region(r, geo, frame)
    return region_mask(regions, geo, frame)


def valid_fixations(gaze: Gaze, geo: Geometry, frame: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """Boolean [N]: finite, positive-duration fixations that fall on the image."""
    x, y = np.asarray(gaze.x, np.float64), np.asarray(gaze.y, np.float64)
    w = np.asarray(gaze.weight, np.float64)
    fw, fh = (float(frame[0]), float(frame[1])) if frame else (float(geo.src_w), float(geo.src_h))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(w) & (w > 0)
    ok &= (x >= 0) & (y >= 0) & (x <= fw) & (y <= fh)
    return ok


def gaze_heatmap(gaze: Gaze, geo: Geometry, frame: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """Duration-weighted Gaussian heatmap, float32 [S, S] with maximum 1.

    Raises :class:`AnnotationError` when no fixation falls on the image.
    """
    ok = valid_fixations(gaze, geo, frame)
    if not ok.any():
        raise AnnotationError(f"none of the {len(gaze)} fixations falls on the image")
    fx, fy = _frame_scale(geo, frame)
    x = np.asarray(gaze.x, np.float64)[ok] * fx
    y = np.asarray(gaze.y, np.float64)[ok] * fy
    w = np.asarray(gaze.weight, np.float64)[ok]
    n = x.shape[0]
    fw, fh = (float(frame[0]), float(frame[1])) if frame else (float(geo.src_w), float(geo.src_h))
    if gaze.sigma_x is not None and gaze.sigma_y is not None:
        sgx = np.asarray(gaze.sigma_x, np.float64)[ok]
        sgy = np.asarray(gaze.sigma_y, np.float64)[ok]
    elif gaze.sigma_px is not None:
        sgx = sgy = np.full(n, float(gaze.sigma_px))
    elif gaze.sigma_frac is not None:
        sgx = sgy = np.full(n, float(gaze.sigma_frac) * max(fw, fh))
    else:
        raise AnnotationError("gaze has no sigma")
    bad = ~(np.isfinite(sgx) & np.isfinite(sgy) & (sgx > 0) & (sgy > 0))
    if bad.any():  # fall back to the median sigma of the reading for rows without one
        good = ~bad
        if not good.any():
            raise AnnotationError("fixations have no valid sigma (angular resolution)")
        sgx = np.where(bad, np.median(sgx[good]), sgx)
        sgy = np.where(bad, np.median(sgy[good]), sgy)
    sx_scale, sy_scale = geo.scale
    px, py = geo.map_xy(x, y)
    sx = np.maximum(sgx * fx * sx_scale, MIN_GAZE_SIGMA_STORED)
    sy = np.maximum(sgy * fy * sy_scale, MIN_GAZE_SIGMA_STORED)
    c = np.arange(geo.size, dtype=np.float64) + 0.5
    gx = np.exp(-0.5 * ((c[None, :] - px[:, None]) / sx[:, None]) ** 2)   # [N, S]
    gy = np.exp(-0.5 * ((c[None, :] - py[:, None]) / sy[:, None]) ** 2)   # [N, S]
    heat = (gy * w[:, None]).T @ gx                                        # [S, S] = sum_k w_k gy_k gx_k^T
    peak = float(heat.max())
    if not np.isfinite(peak) or peak <= 0:
        raise AnnotationError("fixations fall outside the stored field of view")
    return (heat / peak).astype(np.float32)


def fixations_from_points(points: Sequence[Tuple[float, float, float]], **kw) -> Gaze:
    """``[(x, y, duration), ...]`` -> :class:`Gaze` (tests and synthetic data)."""
    arr = np.asarray(points, np.float64).reshape(-1, 3)
    return Gaze(x=arr[:, 0], y=arr[:, 1], weight=arr[:, 2], **kw)


__all__: List[str] = [
    "EGD_SIGMA_PX", "AnnotationError", "Region", "Gaze", "check_region", "region_mask", "box_mask",
    "valid_fixations", "gaze_heatmap", "fixations_from_points",
]
