"""LIDC-IDRI DICOM series with their XML reads: consensus nodule masks, per-slice classes."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ChestCTMTLLib.representation import Representation
from ChestCTMTLLib.results import LESION_TYPES

from .base import SampleSet, build_set, log, split_items
from .volumes import volume_rows

def load_lidc_dicom(spec: dict, split: str, rep: Representation, root: Path,
                    lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    from ..lidc import find_series_dirs, read_lidc_case

    base = root / spec["path"]
    series = find_series_dirs(base)
    if not series:
        raise FileNotFoundError("no DICOM series under %s" % base)
    series = split_items(series, spec.get("holdout"), split)
    rows, skipped, volumes = [], [], []
    for sd in series:
        try:
            case = read_lidc_case(sd, min_readers=int(spec.get("min_readers", 2)))
        except (OSError, ValueError, RuntimeError) as e:
            log.warning("skipping LIDC series %s: %s", sd, e)
            skipped.append("%s: %s" % (sd, e))
            continue
        scan_id = spec.get("name", base.name)
        if len(series) > 1:
            scan_id = "%s/%s" % (scan_id, sd.name[-8:])
        nods = [{"centroid_kji": list(n.centroid_kji), "diameter_mm": n.equivalent_diameter_mm,
                 "bbox_kji": list(n.bbox_kji), "malignancy": n.malignancy} for n in case.nodules]
        r, vol = volume_rows(spec.get("name", "lidc"), case.hu, case.spacing, case.consensus, rep, spec,
                              lesion_types, nods, scan_id)
        vol["source"] = str(sd)
        vol["ijk_to_ras"] = np.asarray(case.ijk_to_ras, float).tolist()  # centroid_kji -> RAS
        rows += r
        volumes.append(vol)
    return build_set(spec.get("name", "lidc"), split, rep, rows, len(lesion_types), skipped=skipped,
                  volumes=volumes)

