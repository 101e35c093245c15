"""A CT volume as the core sees it: a voxel array plus the one matrix that places it in space.

The core never imports SimpleITK images or MRML nodes into its numerics; both are converted
to this at the boundary so that the Logic, the CLI and the training code feed the same thing.
Array axis order is numpy's (k, j, i) = (slice, row, column), exactly what Slicer's
``arrayFromVolume`` returns, and ``ijk_to_ras`` is Slicer's IJKToRAS matrix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

#: Air in HU: what outputs hold wherever the model did not look.
AIR_HU = -1024

# LPS (DICOM, ITK) <-> RAS (Slicer) differ by the sign of the first two axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class CTVolume:
    """Voxels in Hounsfield units with their placement in patient space (RAS, mm)."""

    array: np.ndarray  # (k, j, i)
    ijk_to_ras: np.ndarray  # 4x4
    name: str = "volume"
    source_path: Optional[str] = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64).reshape(4, 4)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (i, j, k) in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def origin_ras(self) -> np.ndarray:
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def directions_ras(self) -> np.ndarray:
        """Unit column vectors of the i, j, k axes in RAS."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    @property
    def size_ijk(self) -> tuple:
        k, j, i = self.array.shape
        return (int(i), int(j), int(k))

    def ijk_to_ras_points(self, ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) continuous IJK indices (i, j, k order) to RAS mm."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def geometry_dict(self) -> dict:
        """Geometry in ITK terms (LPS), as report.json states it."""
        ijk_to_lps = LPS_TO_RAS @ self.ijk_to_ras
        return {
            "size": list(self.size_ijk),
            "spacing": [float(v) for v in self.spacing],
            "origin": [float(v) for v in ijk_to_lps[:3, 3]],
            "direction": [float(v) for v in (ijk_to_lps[:3, :3] / self.spacing).ravel()],
        }


def ijk_to_ras_from_itk(spacing, origin_lps, direction_lps) -> np.ndarray:
    """Slicer's IJKToRAS from ITK's spacing/origin/direction (all in LPS)."""
    d = np.asarray(direction_lps, dtype=np.float64).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d * np.asarray(spacing, dtype=np.float64)[None, :]
    m[:3, 3] = np.asarray(origin_lps, dtype=np.float64)
    return LPS_TO_RAS @ m


def itk_geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray):
    """Inverse of :func:`ijk_to_ras_from_itk`: (spacing, origin_lps, direction_lps 3x3)."""
    m = LPS_TO_RAS @ np.asarray(ijk_to_ras, dtype=np.float64)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    return spacing, m[:3, 3].copy(), m[:3, :3] / spacing
