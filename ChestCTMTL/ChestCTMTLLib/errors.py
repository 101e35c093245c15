"""Errors that name their cause, so every front end (Slicer, CLI, batch script) can say *why*.

Each class carries a short, stable ``cause`` code. The CLI prints it, the Slicer module shows
its message, and tests assert on the class (never on message wording). Everything derives
from :class:`ChestCTMTLError` so a front end can catch "our" failures in one place while
letting programming errors (TypeError, ...) surface as bugs.
"""
from __future__ import annotations

from typing import Optional


class ChestCTMTLError(Exception):
    """Base of every error this package raises on purpose."""

    cause = "error"

    def __init__(self, message: str, path: Optional[str] = None) -> None:
        self.path = None if path is None else str(path)
        text = message if self.path is None else "{}: {}".format(self.path, message)
        super().__init__(text)
        self.message = message


# ---------------------------------------------------------------- input
class InputError(ChestCTMTLError):
    """The input is not something we can analyse; nothing has been written."""

    cause = "bad-input"


class InputNotFoundError(InputError):
    cause = "not-found"


class EmptyFileError(InputError):
    """A zero-byte file (e.g. an interrupted copy)."""

    cause = "empty-file"


class UnreadableFileError(InputError):
    """Not an image format we (SimpleITK) can read, or its header is damaged."""

    cause = "unreadable-file"


class TruncatedFileError(InputError):
    """The header reads but the voxel data ends early or does not decompress."""

    cause = "truncated-file"


class EmptyDicomFolderError(InputError):
    """A folder with no DICOM image series in it (or beneath it)."""

    cause = "empty-dicom-folder"


class DicomSeriesError(InputError):
    """A DICOM series whose slices do not form one regular volume: missing slices, duplicate
    positions, or an image of another orientation or size (a localizer) mixed in."""

    cause = "dicom-series"


class DicomSourceError(InputError):
    """DICOM objects (SEG, SR) were asked for, but the input is not one DICOM series they can
    reference (a volume file, or a folder of several series)."""

    cause = "dicom-source"


class NotAVolumeError(InputError):
    """2D (a single slice) or 4D / multi-component images: the engine analyses 3D CT only."""

    cause = "not-3d"

    def __init__(self, message: str, path: Optional[str] = None, dimension: Optional[int] = None):
        super().__init__(message, path)
        self.dimension = dimension


class VolumeTooSmallError(InputError):
    cause = "too-small"


class NotCTIntensityError(InputError):
    """Intensities do not look like Hounsfield units (MR, unscaled CT, a label map, ...)."""

    cause = "not-ct-intensity"


class NonFiniteValuesError(InputError):
    """NaN or infinite voxels."""

    cause = "non-finite"


class InvalidGeometryError(InputError):
    """A singular or non-finite voxel-to-patient matrix: results could not be placed."""

    cause = "invalid-geometry"


# ---------------------------------------------------------------- model
class ModelError(ChestCTMTLError):
    """A missing, corrupt or mismatching model folder (modelio's ModelLoadError derives from it)."""

    cause = "model"


class ModelNotFoundError(ModelError):
    cause = "model-not-found"


class TaskNotAvailableError(ModelError):
    """A task was requested that the model was not built with."""

    cause = "task-not-available"


# ---------------------------------------------------------------- run control
class DeviceUnavailableError(ChestCTMTLError):
    """``device="cuda"`` was asked for but PyTorch sees no usable GPU."""

    cause = "device-unavailable"



class Cancelled(ChestCTMTLError):
    """The caller's cancel callback asked to stop; no result exists and nothing was written."""

    cause = "cancelled"

    def __init__(self, message: str = "analysis cancelled", path: Optional[str] = None) -> None:
        super().__init__(message, path)
