"""Image and DICOM decoding shared by ingestion (Beam workers) and the gRPC client.

Pillow + numpy + pydicom; no TensorFlow. Typical use::

    from cxr_tfp.io import prepare_image
    stored = prepare_image("/path/to/file.dcm", size=256)   # uint8 [256, 256], as in the TFRecords
"""
from cxr_tfp.io.decoded import DecodedImage
from cxr_tfp.io.dicom import decode_dicom
from cxr_tfp.io.errors import DecodeError, InputError, MissingFileError, NotChestXrayError
from cxr_tfp.io.images import (RESIZE_MODES, Geometry, decode_image, decode_raster, is_dicom, load_image,
                               prepare_image, read_bytes, resize_to_square)
from cxr_tfp.io.views import normalise_view


__all__ = [
    "DecodeError", "InputError", "MissingFileError", "NotChestXrayError", "RESIZE_MODES",
    "DecodedImage", "Geometry", "decode_image", "decode_raster", "decode_dicom", "is_dicom",
    "load_image", "prepare_image", "read_bytes", "resize_to_square", "normalise_view",
]
