"""COVID-CT-MD whole CTs (HU NIfTI): a normal, a pneumonia (CAP) and a COVID-19 chest.

Scan-level diagnosis comes from the file name's prefix (``normal_``, ``cap_``, ``covid_``), the
slice-level infection flags from ``<scan>_slice_labels.csv`` (``k`` along the NIfTI's third
axis). Slice classes, as the data supports them:

* normal scan: every lung slice ``non-covid``, lesion-free (``mask_present`` true: no lesion);
* pneumonia scan: every lung slice ``non-covid``; its infected slices are the hard negatives
  (``meta["hard_negative"]``: infected, yet not COVID-19);
* COVID-19 scan: ``covid`` on its infection-labelled slices; its other slices carry no slice
  evidence of COVID-19 and are left out (``uninfected_covid: unlabelled`` keeps them, class -1).

There are no infection masks, so the pneumonia and COVID-19 slices add no segmentation loss.
A whole scan is always on one side of a split: ``holdout`` rules apply to scan ids
(``{mode: names, names: [cap_cap001]}``).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from ChestCTMTLLib.representation import Representation, geometry_for_volume, hu_slices_to_model
from ChestCTMTLLib.results import LESION_TYPES

from .base import SampleSet, build_set, class_index, log, source_folder, split_items

DEFAULT_SCAN_CLASS = {"normal": "non-covid", "cap": "non-covid", "covid": "covid"}


def scan_id_of(path: Path) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(ext):
            return name[:-len(ext)]
    return Path(path).stem


def read_slice_labels(path: Path) -> Dict[int, int]:
    """``k -> infection`` (0/1) from a slice-label CSV; a clear error names a malformed file."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"k", "infection"} <= set(rows[0]):
        raise ValueError("%s needs columns k and infection" % path)
    return {int(r["k"]): int(r["infection"]) for r in rows}


def nifti_k_to_array_k(original, oriented, n_k: int) -> np.ndarray:
    """For each index k along the file's third axis, its slice index in the LPS-oriented array."""
    out = np.empty(n_k, int)
    for k in range(n_k):
        pt = original.TransformIndexToPhysicalPoint((0, 0, k))
        out[k] = oriented.TransformPhysicalPointToIndex(pt)[2]
    return out


def load_covid_ct_md(spec: dict, split: str, rep: Representation, root: Path,
                     lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    import SimpleITK as sitk

    folder = source_folder(root, spec, "covid_ct_md", "COVID-CT-MD")
    name = spec.get("name", "covid-ct-md")
    scan_class = dict(DEFAULT_SCAN_CLASS, **(spec.get("scan_class") or {}))
    lesion_free = set(spec.get("lesion_free", ["normal"]))
    keep_uninfected = spec.get("uninfected_covid", "drop") == "unlabelled"
    stride = int(spec.get("slice_stride", 1))
    scans = {scan_id_of(p): p for p in folder.glob("*.nii*")}
    rows, skipped = [], []
    for sid in split_items(sorted(scans), spec.get("holdout"), split):
        prefix = sid.split("_")[0]
        if prefix not in scan_class:
            raise ValueError("COVID-CT-MD scan %s: unknown diagnosis prefix %r (known: %s)"
                             % (sid, prefix, sorted(scan_class)))
        cls = class_index(scan_class[prefix])
        labels_csv = folder / (sid + "_slice_labels.csv")
        try:
            original = sitk.ReadImage(str(scans[sid]))
            if original.GetDimension() != 3:
                raise ValueError("%s is not a 3D image" % scans[sid])
            img = sitk.DICOMOrient(original, "LPS")
            labels = read_slice_labels(labels_csv) if labels_csv.is_file() else None
        except (OSError, RuntimeError, ValueError) as e:
            log.warning("skipping %s: %s", scans[sid], e)
            skipped.append("%s: %s" % (scans[sid], e))
            continue
        if prefix != "normal" and labels is None:
            raise FileNotFoundError("COVID-CT-MD scan %s needs %s" % (sid, labels_csv.name))
        hu = sitk.GetArrayFromImage(img).astype(np.int16)
        spacing = img.GetSpacing()
        to_array = nifti_k_to_array_k(original, img, hu.shape[0])
        infected = np.zeros(hu.shape[0], bool)
        for k, v in (labels or {}).items():
            if not 0 <= k < hu.shape[0]:
                raise ValueError("%s: slice k=%d outside the scan's %d slices" % (labels_csv, k, hu.shape[0]))
            infected[to_array[k]] = bool(v)
        from_array = np.argsort(to_array)  # array slice -> the file's k (for ids and meta)
        geom, region = geometry_for_volume(hu, spacing, rep)
        ks = np.union1d(np.asarray(region.slices)[::stride], np.nonzero(infected)[0])
        present = np.full(len(lesion_types), prefix in lesion_free, bool)
        for k0 in range(0, len(ks), 32):
            kk = ks[k0:k0 + 32]
            x = hu_slices_to_model(hu[kk], geom, rep)[:, 0].numpy()
            for n, k in enumerate(kk):
                c = cls
                if prefix == "covid" and not infected[k]:
                    if not keep_uninfected:
                        continue
                    c = -1
                file_k = int(from_array[k])
                rows.append({"image": x[n], "cls": c, "present": present.copy(),
                             "mask": np.zeros((len(lesion_types), rep.input_size, rep.input_size), np.uint8),
                             "id": "%s/%s:k%03d" % (name, sid, file_k),
                             "meta": {"scan": sid, "k": file_k, "array_k": int(k), "diagnosis": prefix,
                                      "infection": bool(infected[k]),
                                      "hard_negative": bool(prefix == "cap" and infected[k]),
                                      "geometry": geom.to_dict(), "spacing": list(spacing)}})
    return build_set(name, split, rep, rows, len(lesion_types), skipped=skipped)
