"""Helpers for the volume I/O and inference tests: real CT crops, re-stored and oblique copies.

Crops keep tests fast on 2 cores while the voxels stay real; re-stored copies (same voxels
and same patient positions, another array order) give exact known answers for orientation.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ChestCTMTLLib.volume import CTVolume


def crop_volume(volume: CTVolume, k0: int, k1: int, j0: int = 0, j1=None, i0: int = 0,
                i1=None, name=None) -> CTVolume:
    """A sub-block of ``volume`` with the geometry that keeps every voxel where it was."""
    a = volume.array[k0:k1, j0:j1, i0:i1].copy()
    m = volume.ijk_to_ras.copy()
    m[:3, 3] = volume.ijk_to_ras_points([[i0, j0, k0]])[0]
    return CTVolume(a, m, name=name or volume.name, source_path=volume.source_path)


def _index_map(shape_src, perm, flips):
    """Affine 4x4 taking new-array ijk to source-array ijk for np.flip(np.transpose(src, perm))."""
    shape_new = tuple(shape_src[p] for p in perm)

    def new_to_src_numpy(n_new):
        n_src = np.zeros(3)
        for b in range(3):
            t = (shape_new[b] - 1 - n_new[b]) if flips[b] else n_new[b]
            n_src[perm[b]] = t
        return n_src

    def new_ijk_to_src_ijk(ijk_new):
        n_new = np.asarray(ijk_new, float)[::-1]
        return new_to_src_numpy(n_new)[::-1]

    o = new_ijk_to_src_ijk([0, 0, 0])
    a = np.eye(4)
    for c in range(3):
        e = np.zeros(3)
        e[c] = 1
        a[:3, c] = new_ijk_to_src_ijk(e) - o
    a[:3, 3] = o
    return a


def restored_copy(volume: CTVolume, perm, flips, name="restored") -> CTVolume:
    """The same voxels at the same RAS positions, stored in another array order."""
    arr = np.transpose(volume.array, perm)
    for ax, f in enumerate(flips):
        if f:
            arr = np.flip(arr, axis=ax)
    m = volume.ijk_to_ras @ _index_map(volume.array.shape, perm, flips)
    return CTVolume(np.ascontiguousarray(arr), m, name=name)


def rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        r = [[1, 0, 0], [0, c, -s], [0, s, c]]
    elif axis == "y":
        r = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    else:
        r = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    m = np.eye(4)
    m[:3, :3] = r
    return m


def oblique_copy(volume: CTVolume, degrees: float = 20.0, axis: str = "x") -> CTVolume:
    """The same array with its direction rotated about the volume centre (an oblique scan)."""
    k, j, i = volume.array.shape
    centre = volume.ijk_to_ras_points([[(i - 1) / 2, (j - 1) / 2, (k - 1) / 2]])[0]
    to_c, back = np.eye(4), np.eye(4)
    to_c[:3, 3] = -centre
    back[:3, 3] = centre
    m = back @ rotation(axis, degrees) @ to_c @ volume.ijk_to_ras
    return CTVolume(volume.array.copy(), m, name="oblique")


@functools.lru_cache(maxsize=4)
def read_cached(path: str) -> CTVolume:
    from ChestCTMTLLib.volume_io import read_ct

    return read_ct(path)


def small_model_folder(folder: Path, input_size: int = 128, backbone: str = "fast",
                       seed: int = 0) -> Path:
    """An untrained model at reduced input size: same code paths, a fraction of the CPU time."""
    from ChestCTMTLLib.model import ModelConfig
    from ChestCTMTLLib.modelio import create_untrained_model_folder

    return create_untrained_model_folder(folder, ModelConfig(backbone=backbone,
                                                             input_size=input_size), seed=seed)
