"""The result of decoding one image file: shared by the raster (images.py) and DICOM (dicom.py) decoders.

Its own module so that neither decoder imports the other's module for it (images.py dispatches to
dicom.py; dicom.py needs only this type).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass
class DecodedImage:
    """A decoded grey image plus what the decoder learnt about it."""

    pixels: np.ndarray                  # uint8 [H, W]
    view: Optional[str] = None          # from DICOM ViewPosition (normalised), else None
    patient_id: Optional[str] = None    # from DICOM (PatientID); never logged or written
    study_id: Optional[str] = None      # from DICOM (StudyInstanceUID)
    image_id: Optional[str] = None      # from DICOM (SOPInstanceUID)
    source_format: str = "png"          # png / jpeg / dicom / ...
