"""DICOM chest radiographs -> display-ready uint8 grey arrays, with pydicom.

The pixel pipeline follows the DICOM grayscale standard display chain (PS3.3 C.11):

1. decode the pixel data (native, or compressed: JPEG Baseline / Extended / Lossless through
   Pillow, or pylibjpeg / GDCM when installed),
2. keep only the ``BitsStored`` bits (stray overlay bits in the high bits are masked off),
3. **modality LUT**: ``RescaleSlope`` / ``RescaleIntercept`` or a Modality LUT Sequence,
4. **VOI LUT**: the first ``WindowCenter`` / ``WindowWidth`` pair (LINEAR, LINEAR_EXACT or SIGMOID
   per ``VOILUTFunction``) or a VOI LUT Sequence; without either, the image's own min..max,
5. **MONOCHROME1** is inverted, so that in every output bone is bright and air dark,
6. scale to 0..255.

Rejected (raise :class:`~cxr_tfp.io.errors.NotChestXrayError`): colour DICOMs (RGB, YBR, more than
one sample per pixel), modalities that are not projection radiography (allowed: CR, DX, DR, RG,
and a missing Modality), a ``BodyPartExamined`` that names something other than the chest, and
multi-frame images, and (unless ``allow_burned_in``) images whose ``BurnedInAnnotation`` is YES:
text burnt into the pixels (names, dates, IDs) is not removed by hashing the header.

Header values in messages: only the fields of :data:`ECHO_ALLOWED`, and only when the value is one
of that field's defined terms (a coded value, never free text: a name planted in ``Modality`` is
not echoed). ``BodyPartExamined`` and every other header value are never echoed. Each error also
carries a ``redacted`` reason with no header value at all (``--redact-sources``). The pixel limit
(:mod:`cxr_tfp.io.limits`) is checked on ``Rows`` x ``Columns`` x frames before decoding.
"""
from __future__ import annotations

import io as _io
from typing import Optional

import numpy as np

from cxr_tfp.io.errors import DecodeError, NotChestXrayError
from cxr_tfp.io.decoded import DecodedImage
from cxr_tfp.io.views import normalise_view

XRAY_MODALITIES = ("CR", "DX", "DR", "RG")
# Header fields whose value may appear in an error message, each with its defined terms (PS3.3
# C.7.3.1.1.1 / C.7.6.3.1.2): coded values only, none of them can identify a patient.
ECHO_ALLOWED = {
    "Modality": frozenset("""AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EPS ES FID GM HC HD IO
        IOL IVOCT IVUS KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PLAN PR
        PT PX REG RESP RF RG RTDOSE RTIMAGE RTPLAN RTRECORD RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP
        TG US VA XA XC DR""".split()),
    "PhotometricInterpretation": frozenset(["MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV",
                                            "ARGB", "CMYK", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422",
                                            "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT"]),
}


def echo(field: str, value) -> str:
    """``value`` if it is a defined term of an allow-listed ``field``, else a placeholder."""
    v = str(value or "").strip().upper()
    return v if v in ECHO_ALLOWED.get(field, ()) else "(value not shown)"


def _transfer_syntax_name(ds) -> str:
    """Name of a standard transfer syntax; a private or malformed UID is not echoed."""
    from pydicom.uid import AllTransferSyntaxes

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        return "unknown transfer syntax"
    return ts.name if ts in AllTransferSyntaxes else "non-standard transfer syntax"
CHEST_WORDS = ("CHEST", "THORAX", "THORAC", "LUNG", "TORAX", "TORSO", "BREAST_CHEST", "PORT")


def _first(value) -> Optional[float]:
    """First number of a (possibly multi-valued) DS element, or None."""
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0] if len(value) else None
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _check_is_cxr(ds) -> None:
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if spp != 1 or pi not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotChestXrayError(
            f"colour DICOM (PhotometricInterpretation {echo('PhotometricInterpretation', pi)}, {spp} "
            "samples per pixel): a chest X-ray must be MONOCHROME1/2",
            redacted="colour DICOM: a chest X-ray must be MONOCHROME1/2")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality and modality not in XRAY_MODALITIES:
        raise NotChestXrayError(
            f"Modality {echo('Modality', modality)} is not a projection radiograph (expected one of "
            f"{', '.join(XRAY_MODALITIES)})",
            redacted=f"Modality is not a projection radiograph (expected one of {', '.join(XRAY_MODALITIES)})")
    body = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if body and not any(w in body for w in CHEST_WORDS):
        raise NotChestXrayError("BodyPartExamined is not the chest")
    frames = ds.get("NumberOfFrames", 1)
    try:
        frames = int(frames or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise NotChestXrayError(f"multi-frame DICOM ({frames} frames): expected one radiograph")


def _mask_bits(arr: np.ndarray, ds) -> np.ndarray:
    bits_stored = int(ds.get("BitsStored", 0) or 0)
    if bits_stored <= 0 or not np.issubdtype(arr.dtype, np.integer):
        return arr
    nbits = arr.dtype.itemsize * 8
    if bits_stored >= nbits:
        return arr
    if int(ds.get("PixelRepresentation", 0) or 0) == 0:
        return arr & np.array((1 << bits_stored) - 1, dtype=arr.dtype)
    # Signed: keep the low bits and sign-extend from bit (bits_stored - 1).
    u = arr.astype(np.int64) & ((1 << bits_stored) - 1)
    sign = 1 << (bits_stored - 1)
    return ((u ^ sign) - sign).astype(arr.dtype)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    function = (function or "LINEAR").strip().upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        width = max(width, 1e-6)
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    width = max(width, 1.0)  # LINEAR requires width >= 1
    if width == 1.0:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _voi(arr: np.ndarray, ds) -> np.ndarray:
    """Apply the VOI transform; output float in [0, 1]."""
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        out = apply_voi_lut(arr, ds, index=0, prefer_lut=True).astype(np.float64)
        raw = item.LUTData
        if isinstance(raw, (bytes, bytearray)):
            lut = np.frombuffer(bytes(raw), dtype="<u2").astype(np.float64)
        else:
            lut = np.atleast_1d(np.asarray(list(raw) if not np.isscalar(raw) else [raw], np.float64))
        lo, hi = float(lut.min()), float(lut.max())
        if hi <= lo:
            return np.zeros_like(out)
        return np.clip((out - lo) / (hi - lo), 0.0, 1.0)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        return _window(arr.astype(np.float64), center, width, str(ds.get("VOILUTFunction", "LINEAR")))
    x = arr.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def read_dataset(data: bytes, stop_before_pixels: bool = False):
    """Parse DICOM bytes with pydicom, raising :class:`DecodeError` with a clean reason."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(_io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise DecodeError("not a DICOM file") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DecodeError(f"truncated or corrupt DICOM ({type(exc).__name__})") from None
    return ds


def _int(ds, name: str, default: int) -> int:
    try:
        return int(ds.get(name, default) or default)
    except (TypeError, ValueError):
        return default


def _check_burned_in(ds) -> None:
    if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        raise NotChestXrayError("BurnedInAnnotation is YES: text burnt into the pixels may identify the "
                                "patient (keep such images with --keep-burned-in)")


def decode_dicom(data: bytes, max_pixels: Optional[int] = None, allow_burned_in: bool = False) -> DecodedImage:
    """DICOM bytes -> :class:`DecodedImage` (uint8 grey, view and pseudonymisable ids attached)."""
    from cxr_tfp.io.limits import check_pixels

    ds = read_dataset(data)
    if "PixelData" not in ds:
        raise DecodeError("DICOM has no pixel data")
    _check_is_cxr(ds)
    if not allow_burned_in:
        _check_burned_in(ds)
    check_pixels(_int(ds, "Columns", 0), _int(ds, "Rows", 0), max_pixels,
                 frames=_int(ds, "NumberOfFrames", 1), samples=_int(ds, "SamplesPerPixel", 1))
    from pydicom.pixels import apply_modality_lut

    ts_name = _transfer_syntax_name(ds)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001  (pydicom raises many types for bad pixel data)
        # pydicom's message may quote header values: only its type is echoed.
        raise DecodeError(f"cannot decode DICOM pixel data ({ts_name}): {type(exc).__name__}",
                          redacted=f"cannot decode DICOM pixel data ({type(exc).__name__})") from None
    if arr.ndim != 2:
        raise NotChestXrayError(f"DICOM pixel array has shape {arr.shape}: expected one 2-D grey image")
    arr = _mask_bits(arr, ds)
    try:
        x = apply_modality_lut(arr, ds)
    except Exception as exc:  # noqa: BLE001
        raise DecodeError(f"invalid modality LUT ({type(exc).__name__})") from None
    y = _voi(np.asarray(x), ds)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        y = 1.0 - y
    pixels = np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)

    def s(name: str) -> Optional[str]:
        v = ds.get(name)
        v = None if v is None else str(v).strip()
        return v or None

    return DecodedImage(pixels=pixels, view=normalise_view(s("ViewPosition")),
                        patient_id=s("PatientID"), study_id=s("StudyInstanceUID"),
                        image_id=s("SOPInstanceUID"), source_format="dicom")
