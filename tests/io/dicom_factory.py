"""Small DICOM files made with pydicom, for tests (no real patient data)."""
from __future__ import annotations

import io

import numpy as np


def make_dicom(arr: np.ndarray, *, bits_stored: int = 12, signed: bool = False, photometric: str = "MONOCHROME2",
               modality: str = "DX", body_part: str = "CHEST", view: str = "PA", patient_id: str = "PAT-0001",
               patient_name: str = "Doe^Jane", window=None, rescale=None, voi_lut=None, voi_function=None,
               samples_per_pixel: int = 1, compress_rle: bool = False) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.StudyInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName = patient_id, patient_name
    ds.Modality = modality
    if body_part:
        ds.BodyPartExamined = body_part
    if view:
        ds.ViewPosition = view
    ds.SamplesPerPixel = samples_per_pixel
    ds.PhotometricInterpretation = photometric
    if samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
    else:
        ds.BitsAllocated = 16 if bits_stored > 8 else 8
        ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
        ds.PixelRepresentation = int(signed)
    ds.Rows, ds.Columns = arr.shape[:2]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function:
        ds.VOILUTFunction = voi_function
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut is not None:
        first, bits, data = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(data), first, bits]
        item.add_new(0x00283006, "US", [int(v) for v in data])
        ds.VOILUTSequence = Sequence([item])
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    if compress_rle:
        ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ramp(h: int = 64, w: int = 64, hi: int = 4095, dtype=np.uint16) -> np.ndarray:
    return np.tile(np.linspace(0, hi, w).round().astype(dtype), (h, 1))
