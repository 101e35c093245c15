"""Axial views of arbitrarily oriented volumes, by index permutation and flips only.

Why no resampling: outputs must land on the input's own voxel grid *exactly*. Any orientation
(sagittal, coronal, oblique, flipped) is turned into an axial stack by choosing the array axis
closest to superior as the slice axis, the remaining axis closest to R as the column axis, and
flipping so that slices run inferior->superior, rows anterior->posterior and columns
right->left: the radiological display convention of the 2D training images (patient's right
on the image's left, anterior at the top). Permuting and flipping numpy axes gives *views*, so
mapping model outputs back is exact and writing through the view fills the input-ordered
output array directly, with no copy. An oblique volume is analysed in its own tilted planes;
they are close to axial by construction (the tilt is below 45 degrees).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class AxialView:
    """How a (k, j, i) array maps to canonical (slice, row, col) = axial display order."""

    perm: Tuple[int, int, int]  # numpy axes of the input array giving (slice, row, col)
    flips: Tuple[bool, bool, bool]  # flip canonical axis after the permutation
    shape: Tuple[int, int, int]  # input array shape
    spacing: Tuple[float, float, float]  # mm along canonical (slice, row, col)

    @property
    def canonical_shape(self) -> Tuple[int, int, int]:
        return tuple(self.shape[a] for a in self.perm)  # type: ignore[return-value]

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flips)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """A (writable if ``array`` is) view of ``array`` in (slice, row, col) order."""
        v = np.transpose(array, self.perm)
        for ax, f in enumerate(self.flips):
            if f:
                v = np.flip(v, axis=ax)
        return v

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_canonical` (a view)."""
        v = array
        for ax, f in enumerate(self.flips):
            if f:
                v = np.flip(v, axis=ax)
        return np.transpose(v, np.argsort(self.perm))

    def canonical_to_ijk(self, points) -> np.ndarray:
        """Continuous canonical (slice, row, col) coordinates (N, 3) -> continuous (i, j, k).

        Uses voxel-centre coordinates (index n is the centre of voxel n) on both sides, so a
        flip maps x to (size - 1 - x).
        """
        p = np.atleast_2d(np.asarray(points, dtype=np.float64)).copy()
        cshape = self.canonical_shape
        for ax, f in enumerate(self.flips):
            if f:
                p[:, ax] = (cshape[ax] - 1) - p[:, ax]
        numpy_idx = np.empty_like(p)
        for c_ax, n_ax in enumerate(self.perm):
            numpy_idx[:, n_ax] = p[:, c_ax]
        return numpy_idx[:, ::-1].copy()  # (k, j, i) -> (i, j, k)

    def canonical_box_to_ijk(self, lo, hi) -> Tuple[np.ndarray, np.ndarray]:
        """Inclusive integer canonical box -> inclusive integer (i, j, k) box (min, max)."""
        corners = self.canonical_to_ijk(np.array([lo, hi], dtype=np.float64))
        return (np.rint(corners.min(axis=0)).astype(int), np.rint(corners.max(axis=0)).astype(int))


def axial_view(ijk_to_ras, shape) -> AxialView:
    """The :class:`AxialView` of an array of ``shape`` (k, j, i) placed by ``ijk_to_ras``."""
    m = np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3]
    spacing_ijk = np.linalg.norm(m, axis=0)
    d = m / spacing_ijk  # unit columns: directions of i, j, k in RAS
    # numpy axis a <-> ijk axis 2 - a
    dir_np = [d[:, 2 - a] for a in range(3)]
    sp_np = [float(spacing_ijk[2 - a]) for a in range(3)]
    s_axis = int(np.argmax([abs(v[2]) for v in dir_np]))
    rest = [a for a in range(3) if a != s_axis]
    col_axis = rest[int(np.argmax([abs(dir_np[a][0]) for a in rest]))]
    row_axis = rest[0] if rest[1] == col_axis else rest[1]
    perm = (s_axis, row_axis, col_axis)
    flips = (dir_np[s_axis][2] < 0,  # slices inferior -> superior
             dir_np[row_axis][1] > 0,  # rows anterior -> posterior (A decreasing)
             dir_np[col_axis][0] > 0)  # columns right -> left (R decreasing)
    return AxialView(perm, tuple(bool(f) for f in flips), tuple(int(s) for s in shape),
                     tuple(sp_np[a] for a in perm))
