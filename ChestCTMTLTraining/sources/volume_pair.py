"""One HU volume (NIfTI/NRRD) with a lesion mask and an optional nodules CSV (LIDC-IDRI-0002)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ChestCTMTLLib.representation import Representation
from ChestCTMTLLib.results import LESION_TYPES
from ChestCTMTLLib.volume import ijk_to_ras_from_itk

from .base import SampleSet, build_set, empty_set, log
from .volumes import read_csv, read_oriented, volume_rows

def load_volume_pair(spec: dict, split: str, rep: Representation, root: Path,
                     lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    """NIfTI/NRRD image (HU) + lesion mask (>= ``mask_threshold``) with an optional nodules CSV."""
    import SimpleITK as sitk

    if split == "train" and (spec.get("holdout") or {}).get("mode") == "all":
        return empty_set(spec.get("name", "volume"), split, rep, len(lesion_types))
    if split == "val" and (spec.get("holdout") or {}).get("mode", "none") == "none":
        return empty_set(spec.get("name", "volume"), split, rep, len(lesion_types))
    img_path, mask_path = root / spec["image"], root / spec["mask"]
    try:
        img = read_oriented(img_path)
        msk = read_oriented(mask_path)
    except (RuntimeError, ValueError) as e:
        log.warning("skipping %s: %s", img_path, e)
        out = empty_set(spec.get("name", "volume"), split, rep, len(lesion_types))
        out.skipped.append("%s: %s" % (img_path, e))
        return out
    hu = sitk.GetArrayFromImage(img).astype(np.int16)
    mask = sitk.GetArrayFromImage(msk)
    if mask.shape != hu.shape:
        raise ValueError("mask %s shape %s != image %s" % (mask_path, mask.shape, hu.shape))
    mask = (mask >= float(spec.get("mask_threshold", 1))).astype(np.uint8)
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sp = img.GetSpacing()
    nods = []
    for lab in range(1, n + 1):
        kk, jj, ii = np.nonzero(labels == lab)
        vol = len(kk) * sp[0] * sp[1] * sp[2]
        if vol < float(spec.get("min_volume_mm3", 10.0)):
            continue  # one-voxel reader marks of < 3 mm nodules
        nods.append({"centroid_kji": [float(kk.mean()), float(jj.mean()), float(ii.mean())],
                     "diameter_mm": float((6 * vol / np.pi) ** (1 / 3)),
                     "bbox_kji": [int(kk.min()), int(kk.max()) + 1, int(jj.min()), int(jj.max()) + 1,
                                  int(ii.min()), int(ii.max()) + 1]})
    keep = np.isin(labels, [lab for lab in range(1, n + 1)
                            if (labels == lab).sum() * sp[0] * sp[1] * sp[2] >= float(spec.get("min_volume_mm3", 10.0))])
    scan_id = spec.get("name", Path(spec["image"]).parent.name)
    rows, vol = volume_rows(scan_id, hu, sp, keep.astype(np.uint8), rep, spec, lesion_types, nods, scan_id)
    vol["source"] = str(img_path)
    vol["ijk_to_ras"] = ijk_to_ras_from_itk(img.GetSpacing(), img.GetOrigin(), img.GetDirection()).tolist()
    if spec.get("csv"):
        vol["csv"] = read_csv(root / spec["csv"])
    return build_set(scan_id, split, rep, rows, len(lesion_types), volumes=[vol])

