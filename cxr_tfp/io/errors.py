"""Errors raised while reading an input image: each carries a reason fit for a dead-letter line.

Messages name the problem, never the patient: no PatientName, PatientID or other header values.
"""
from __future__ import annotations


class InputError(ValueError):
    """An input that cannot become a record. ``stage`` says where it failed.

    ``redacted`` is the same reason without any header value (even allow-listed ones), used when
    the build runs with ``--redact-sources``.
    """

    stage = "input"

    def __init__(self, message: str = "", redacted: "str | None" = None):
        super().__init__(message)
        self.redacted = redacted if redacted is not None else message


class MissingFileError(InputError):
    stage = "read"


class DecodeError(InputError):
    """Not an image, truncated, or an encoding that cannot be decoded here."""

    stage = "decode"


class NotChestXrayError(InputError):
    """Decodes, but is not a grey chest radiograph (RGB, CT, wrong body part, too small...)."""

    stage = "validate"
