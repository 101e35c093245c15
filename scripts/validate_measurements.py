"""Check :mod:`ChestCTMTLLib.measurements` against the LIDC readers on every nodule VOI.

    .venv/bin/python scripts/validate_measurements.py [--data DIR] [--limit N] [--out FILE]

For each ``lidc_nodule_vois/nodule_mask/<patient>_R_<nodule>.nii.gz`` (with its HU crop in
``image/``) the row of ``nodules.csv`` with the same ``patient_id`` and ``nodule_id`` is the
reference: ``diameter_mm`` for size (see docs/measurements.md for what that column is), and
``Texture_value`` (readers' max-voted texture, 1 non-solid ... 5 solid) for composition, read
as 1-2 ground-glass, 3-4 part-solid, 5 solid. Prints one JSON document (and writes it to
``--out`` when given).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "ChestCTMTL"), str(REPO)]

from ChestCTMTLLib.measurements import (COMPOSITIONS, lung_rads_size_category,  # noqa: E402
                                        measure_nodule)
from ChestCTMTLLib.orientation import axial_view  # noqa: E402
from ChestCTMTLLib.paths import data_root  # noqa: E402
from ChestCTMTLLib.volume import ijk_to_ras_from_itk  # noqa: E402

NAME = re.compile(r"^(LIDC-IDRI-\d{4})_R_(\d+)\.nii\.gz$")
ORDER = ("ground-glass", "part-solid", "solid")  # confusion-matrix rows/columns
SIZE_KEYS = ("mean_diameter_mm", "long_axis_mm", "equivalent_diameter_mm", "feret_diameter_mm")


def reader_composition(texture_value: str) -> str:
    t = int(float(texture_value))
    return "ground-glass" if t <= 2 else ("part-solid" if t <= 4 else "solid")


def _canonical(image):
    """(array in canonical (slice, row, col) order, spacing) of a SimpleITK image."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    view = axial_view(ijk_to_ras_from_itk(image.GetSpacing(), image.GetOrigin(),
                                          image.GetDirection()), array.shape)
    return np.ascontiguousarray(view.to_canonical(array)), view.spacing


def _agreement(ours, ref) -> dict:
    d = np.asarray(ours, dtype=float) - np.asarray(ref, dtype=float)
    return {"n": int(d.size), "mae_mm": round(float(np.abs(d).mean()), 3),
            "bias_mm": round(float(d.mean()), 3), "sd_diff_mm": round(float(d.std(ddof=1)), 3),
            "median_abs_error_mm": round(float(np.median(np.abs(d))), 3),
            "pearson_r": round(float(np.corrcoef(ours, ref)[0, 1]), 4)}


def _confusion(truth, pred, labels) -> dict:
    index = {name: i for i, name in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(truth, pred):
        m[index[t], index[p]] += 1
    n = int(m.sum())
    accuracy = float(np.trace(m)) / n
    expected = float((m.sum(axis=0) * m.sum(axis=1)).sum()) / (n * n)
    recall = {name: (round(float(m[i, i]) / m[i].sum(), 3) if m[i].sum() else None)
              for i, name in enumerate(labels)}
    balanced = float(np.mean([v for v in recall.values() if v is not None]))
    return {"labels": list(labels), "rows": "readers", "columns": "ours", "matrix": m.tolist(),
            "n": n, "accuracy": round(accuracy, 4),
            "cohen_kappa": round((accuracy - expected) / (1 - expected), 4),
            "recall_per_reader_class": recall,
            "balanced_accuracy": round(balanced, 4),
            "accuracy_of_always_solid": round(float(m[index["solid"]].sum()) / n, 4)}


def main(argv=None) -> int:
    import SimpleITK as sitk
    from scipy import ndimage

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=data_root() / "lidc_nodule_vois")
    parser.add_argument("--limit", type=int, default=0, help="first N masks only (0 = all)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    rows = {}
    with open(args.data / "nodules.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            rows[(row["patient_id"], str(int(row["nodule_id"])))] = row
    masks = sorted((args.data / "nodule_mask").glob("*.nii.gz"))
    if args.limit:
        masks = masks[:args.limit]

    started = time.process_time()
    records, unmatched, centre_outside, multi_component, empty = [], [], 0, 0, 0
    for path in masks:
        match = NAME.match(path.name)
        row = rows.get((match.group(1), str(int(match.group(2))))) if match else None
        if row is None:
            unmatched.append(path.name)
            continue
        mask_image = sitk.ReadImage(str(path))
        hu_image = sitk.ReadImage(str(args.data / "image" / path.name))
        centre = mask_image.TransformPhysicalPointToContinuousIndex(
            tuple(float(row[k]) for k in ("coordX", "coordY", "coordZ")))
        if not all(-0.5 <= c <= n - 0.5 for c, n in zip(centre, mask_image.GetSize())):
            centre_outside += 1
        mask, spacing = _canonical(mask_image)
        hu, _ = _canonical(hu_image)
        if not mask.any():
            empty += 1
            continue
        if ndimage.label(mask != 0, structure=np.ones((3, 3, 3)))[1] > 1:
            multi_component += 1
        m = measure_nodule(mask, spacing, hu=hu)
        records.append({"name": path.name, "ref_diameter_mm": float(row["diameter_mm"]),
                        "reader": reader_composition(row["Texture_value"]), **m})

    ref = [r["ref_diameter_mm"] for r in records]
    size = {key: _agreement([r[key] for r in records], ref) for key in SIZE_KEYS}
    large = [r for r in records if r["ref_diameter_mm"] >= 10.0]
    size["mean_diameter_mm_ref_ge_10mm"] = _agreement([r["mean_diameter_mm"] for r in large],
                                                      [r["ref_diameter_mm"] for r in large])
    composition = _confusion([r["reader"] for r in records], [r["composition"] for r in records],
                             ORDER)
    for name, keep in (("ref_lt_6mm", lambda d: d < 6.0), ("ref_ge_6mm", lambda d: d >= 6.0)):
        subset = [r for r in records if keep(r["ref_diameter_mm"])]
        composition[name] = {k: v for k, v in _confusion(
            [r["reader"] for r in subset], [r["composition"] for r in subset], ORDER).items()
            if k in ("matrix", "n", "accuracy", "cohen_kappa", "balanced_accuracy")}
    both_solid = [r for r in records if r["reader"] == "solid" and r["composition"] == "solid"]
    bands = ("2", "3", "4A", "4B")
    cat = _confusion_categories(
        [lung_rads_size_category(r["ref_diameter_mm"], "solid")["category"] for r in both_solid],
        [lung_rads_size_category(r["mean_diameter_mm"], "solid")["category"] for r in both_solid],
        bands)
    report = {
        "data": str(args.data), "masks": len(masks), "measured": len(records),
        "unmatched_files": unmatched, "empty_masks": empty,
        "csv_centre_outside_crop": centre_outside, "masks_with_several_components": multi_component,
        "size_vs_diameter_mm": size,
        "composition_vs_reader_texture": composition,
        "lung_rads_solid_band_ours_vs_from_diameter_mm": cat,
        "composition_counts_ours": {c: sum(r["composition"] == c for r in records)
                                    for c in COMPOSITIONS},
        "cpu_seconds": round(time.process_time() - started, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def _confusion_categories(ref, ours, labels) -> dict:
    index = {name: i for i, name in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(ref, ours):
        m[index[t], index[p]] += 1
    n = int(m.sum())
    return {"subset": "nodules that readers (texture 5) and we both call solid",
            "labels": list(labels), "rows": "from diameter_mm", "columns": "from our mean diameter",
            "matrix": m.tolist(), "n": n,
            "agreement": round(float(np.trace(m)) / n, 4) if n else None}


if __name__ == "__main__":
    raise SystemExit(main())
