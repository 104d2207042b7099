"""View position names, normalised to :data:`cxr_tfp.features.VIEWS` (PA, AP, LL, UNKNOWN)."""
from __future__ import annotations

from typing import Optional

_VIEW_MAP = {
    "PA": "PA", "POSTERO_ANTERIOR": "PA", "POSTEROANTERIOR": "PA", "POSTERIOR-ANTERIOR": "PA",
    "AP": "AP", "ANTERO_POSTERIOR": "AP", "ANTEROPOSTERIOR": "AP", "ANTERIOR-POSTERIOR": "AP",
    "AP AXIAL": "AP", "AP SUPINE": "AP", "AP ERECT": "AP",
    "LL": "LL", "LATERAL": "LL", "LAT": "LL", "RL": "LL", "LEFT LATERAL": "LL",
    "RIGHT LATERAL": "LL", "XTABLE LATERAL": "LL",
}


def normalise_view(value: Optional[str]) -> str:
    """``'ap'`` -> ``'AP'``, ``'LATERAL'`` -> ``'LL'``, anything unknown or empty -> ``'UNKNOWN'``."""
    if value is None:
        return "UNKNOWN"
    key = str(value).strip().upper().replace("\\", " ")
    if not key or key in ("NAN", "NONE"):
        return "UNKNOWN"
    return _VIEW_MAP.get(key, "UNKNOWN")
