"""Check lung involvement (ChestCTMTLLib.involvement) on the three whole COVID-CT-MD CTs.

    .venv/bin/python scripts/validate_involvement.py [--data DATA_ROOT] [--threads N] [--out FILE]

Runs the shipped pipeline (``Analyzer(None, device="cpu")``) on normal001, cap001 and P001,
reads the shipped report's involvement (``AnalysisResult.involvement``, measured on the lesion the zone findings count), and
compares it with the only truth these scans have: the radiologists' per-slice infection labels
(``*_slice_labels.csv``; none for the normal scan, which has no lung disease). Per scan it
prints the involvement and, over the slices that hold lung, the fraction of labelled-infected
slices that carry lesion, the fraction of labelled-clean slices that do, and the AUC of the
slice's lesion fraction for the label. One JSON document on stdout (and in ``--out``).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "ChestCTMTL"), str(REPO)]

from ChestCTMTLLib.orientation import axial_view  # noqa: E402
from ChestCTMTLLib.paths import data_root  # noqa: E402

SCANS = ("normal_normal001", "cap_cap001", "covid_P001")
#: a slice "carries lesion" from this share of its lung voxels on (1 voxel also reported)
SLICE_MIN_FRACTION = 0.01


def read_slice_labels(path: Path) -> np.ndarray:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.zeros(len(rows), np.int64)
    for row in rows:
        labels[int(row["k"])] = int(row["infection"])
    return labels


def auc(scores: np.ndarray, positive: np.ndarray):
    """Mann-Whitney AUC (ties count half); None without both classes."""
    pos, neg = scores[positive], scores[~positive]
    if pos.size == 0 or neg.size == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return round(float(greater) / (pos.size * neg.size), 3)


def slice_agreement(lung_area: np.ndarray, lesion_area: np.ndarray, labelled: np.ndarray) -> dict:
    """Labelled-infected vs labelled-clean slices (those with lung) that carry lesion."""
    has_lung = lung_area > 0
    frac = np.where(has_lung, lesion_area / np.maximum(lung_area, 1), 0.0)
    out = {"slices_with_lung": int(has_lung.sum())}
    pos = labelled.astype(bool) & has_lung
    neg = ~labelled.astype(bool) & has_lung
    out["labelled_infected_slices"] = int(pos.sum())
    out["labelled_clean_slices"] = int(neg.sum())
    out["labelled_infected_outside_lung_mask"] = int((labelled.astype(bool) & ~has_lung).sum())
    for name, carry in (("any_voxel", lesion_area > 0), ("min_1pct", frac >= SLICE_MIN_FRACTION)):
        out["infected_slices_with_lesion_" + name] = (round(float(carry[pos].mean()), 3)
                                                      if pos.any() else None)
        out["clean_slices_with_lesion_" + name] = (round(float(carry[neg].mean()), 3)
                                                   if neg.any() else None)
    out["slice_lesion_fraction_auc"] = auc(frac[has_lung], labelled.astype(bool)[has_lung])
    total = float(lesion_area.sum())
    out["lesion_share_on_infected_slices"] = (round(float(lesion_area[pos].sum()) / total, 3)
                                              if total > 0 else None)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="data root (default: ../shared/data)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    folder = (args.data or data_root()) / "covid_ct_md"
    if not folder.is_dir():
        print("COVID-CT-MD scans not found: %s" % folder, file=sys.stderr)
        return 2
    from ChestCTMTLLib.inference import Analyzer
    from ChestCTMTLLib.volume_io import read_ct

    analyzer = Analyzer(None, device="cpu", num_threads=args.threads)
    report = {"command": "scripts/validate_involvement.py --threads %d" % args.threads,
              "model": None, "slice_min_fraction": SLICE_MIN_FRACTION, "scans": {}}
    for name in SCANS:
        path = folder / (name + ".nii.gz")
        if not path.is_file():
            report["scans"][name] = {"error": "missing: %s" % path}
            continue
        t0 = time.perf_counter()
        vol = read_ct(path)
        res = analyzer.apply(vol)
        report["model"] = report["model"] or getattr(res, "model", None)
        stage = res.stage
        view = axial_view(vol.ijk_to_ras, vol.array.shape)
        canon = view.to_canonical(vol.array)
        # what the shipped report says, and the lesion it was measured on (the zones' lesion)
        lesion = np.zeros(canon.shape, bool)
        if stage.infection is not None:
            lesion[stage.crop] = stage.infection
        inv = res.involvement
        entry = {"predicted_class": res.predicted_class,
                 "class_probabilities": {k: round(float(v), 3)
                                         for k, v in res.class_probabilities.items()},
                 "involvement": inv, "seconds": round(time.perf_counter() - t0, 1),
                 "view": {"perm": list(view.perm), "flips": list(view.flips),
                          "spacing_mm": [round(s, 3) for s in view.spacing]}}
        lungs = stage.lungs.labels > 0 if stage.lungs is not None else np.zeros(canon.shape, bool)
        lung_area = lungs.sum(axis=(1, 2))
        lesion_area = (lesion & lungs).sum(axis=(1, 2))
        csv_path = folder / (name + "_slice_labels.csv")
        if csv_path.is_file():
            k_labels = read_slice_labels(csv_path)
            # k runs along numpy axis 0 of read_ct's array; canonical slices are that axis,
            # flipped when it runs superior -> inferior
            if view.perm[0] != 0 or k_labels.size != canon.shape[0]:
                entry["slices"] = {"error": "slice labels do not map onto the canonical slices "
                                            "(perm %s, %d labels, %d slices)"
                                            % (view.perm, k_labels.size, canon.shape[0])}
            else:
                canon_labels = k_labels[::-1] if view.flips[0] else k_labels
                entry["slices"] = slice_agreement(lung_area, lesion_area, canon_labels)
                # a check of the mapping itself: the labels read the other way round
                rev = slice_agreement(lung_area, lesion_area, canon_labels[::-1])
                entry["slices"]["auc_if_labels_reversed"] = rev["slice_lesion_fraction_auc"]
        else:
            has_lung = lung_area > 0
            entry["slices"] = {
                "slices_with_lung": int(has_lung.sum()),
                "slices_with_lesion_any_voxel": (round(float((lesion_area[has_lung] > 0).mean()), 3)
                                                 if has_lung.any() else None),
                "slices_with_lesion_min_1pct": (round(float(
                    (lesion_area[has_lung] >= SLICE_MIN_FRACTION * lung_area[has_lung]).mean()), 3)
                    if has_lung.any() else None)}
        report["scans"][name] = entry
        print("%s: %.1f s" % (name, entry["seconds"]), file=sys.stderr)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
