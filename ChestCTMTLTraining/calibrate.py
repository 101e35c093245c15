"""Fit a model folder's calibration.json: slice temperature, nodule shape rules, operating point.

``python -m ChestCTMTLTraining calibrate --model DIR`` re-fits everything a retrained model
needs, from three kinds of material kept apart from the whole-CT validation scans:

* **temperature** of the slice classifier: held-out labelled slices the model never trained
  on - the config's validation split of IQ-OTH/NCCD and COVID-SemiSeg plus the SARS-CoV-2 CT
  slices: every one where the recipe does not train on that hospital (``default``), its
  validation split where it does (``v3_sources``). Whole-CT validation scans
  (LIDC-IDRI-0002 ...) are excluded;
* **nodule shape rules**: percentiles of 3D shape features over the expert-outlined LIDC nodule
  VOIs, re-sliced to each slice thickness (:func:`ChestCTMTLLib.calibration.fit_shape_rules`);
  patients of our whole CTs are excluded;
* **score threshold** (the findings' operating point): on the manifest's *calibration* scans,
  the lowest threshold on a 0.05 grid at which every scan has at most ``max_fp_per_scan``
  (default 0) false-positive nodule/mass findings and every nodule >= 10 mm is still found.
  Zero on the calibration scans leaves headroom for the one false positive per scan the
  product allows on scans it has never seen.

The verdict's likelihood ratios are not fitted (see :mod:`ChestCTMTLLib.verdict`).
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

log = logging.getLogger("ChestCTMTLTraining")

#: Sources of slices for the temperature (held out or never trained on).
TEMPERATURE_SOURCES = ("iq-othnccd", "covid-doctor")
SARSCOV2_SPEC = {"name": "sarscov2-ct", "type": "image_folder", "path": "sarscov2_ct",
                 "mapping": {"covid": "covid", "non-covid": "non-covid"},
                 "holdout": {"mode": "all"}}
#: LIDC patients whose whole CTs we evaluate: their nodules never shape the rules.
EXCLUDED_VOI_PATIENTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003")
THRESHOLD_GRID = tuple(round(0.2 + 0.05 * i, 2) for i in range(15))  # 0.20 ... 0.90


def slice_probabilities(loaded, data: str = "default", device: str = "cpu",
                        max_per_source: Optional[int] = None, batch_size: int = 32):
    """(probs (N, C), labels (N,), sources) of the temperature material."""
    import torch

    from .batching import eval_items
    from .config import load_config
    from .loading import load_split

    cfg = load_config(data)
    specs = [dict(s) for s in cfg["sources"] if s.get("name") in TEMPERATURE_SOURCES]
    # a recipe that trains on SARS-CoV-2 CT (v3) gives its validation split; otherwise every
    # slice is unseen
    trained = [dict(s) for s in cfg["sources"] if s.get("name") == SARSCOV2_SPEC["name"]]
    specs += trained or [dict(SARSCOV2_SPEC)]
    if max_per_source:
        for s in specs:
            s["max_samples"] = int(max_per_source)
    sets = load_split(cfg, "val", loaded.representation, loaded.config.lesion_types, specs)
    net = loaded.model.eval()
    probs, labels, sources = [], [], []
    for s in sets:
        items = [(sid, it) for sid, it, _m in eval_items(s, loaded.config.input_size,
                                                           loaded.config.det_stride)
                 if int(it["cls"]) >= 0]
        for b0 in range(0, len(items), batch_size):
            chunk = items[b0:b0 + batch_size]
            x = torch.stack([it["image"] for _sid, it in chunk]).to(device)
            with torch.inference_mode():
                logits = net(x, tasks=("classification",))["class_logits"].float().cpu()
            probs.append(torch.softmax(logits, dim=1).numpy())
            labels += [int(it["cls"]) for _sid, it in chunk]
            sources += [s.name] * len(chunk)
    if not probs:
        raise ValueError("no labelled slices for the temperature (is the data root there?)")
    return np.concatenate(probs), np.asarray(labels), sources


def voi_masks(root: Path, exclude: Sequence[str] = EXCLUDED_VOI_PATIENTS):
    """(mask, spacing (slice, row, col)) of every LIDC nodule VOI outside ``exclude``."""
    import SimpleITK as sitk

    folder = Path(root) / "lidc_nodule_vois" / "nodule_mask"
    files = sorted(p for p in folder.glob("*.nii*") if not p.name.startswith(tuple(exclude)))
    if not files:
        raise FileNotFoundError("no LIDC nodule masks under %s" % folder)
    out = []
    for path in files:
        img = sitk.ReadImage(str(path))
        out.append((sitk.GetArrayFromImage(img) > 0, np.asarray(img.GetSpacing(), float)[::-1]))
    return out


def reliability_plot(probs: np.ndarray, labels: np.ndarray, temperature: float, path: Path) -> None:
    """Reliability diagram of the slice classifier's top class, before and after the temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ChestCTMTLLib.calibration import temperature_scale

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    edges = np.linspace(0, 1, 11)
    for p, name in ((probs, "T = 1"), (temperature_scale(probs, temperature), "T = %.2f" % temperature)):
        conf = p.max(axis=1)
        correct = (p.argmax(axis=1) == labels).astype(float)
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (conf >= lo) & (conf < hi if hi < 1 else conf <= hi)
            if sel.sum() >= 5:
                xs.append(conf[sel].mean())
                ys.append(correct[sel].mean())
        ece = sum(abs(((conf >= lo) & (conf < hi)).mean() * (correct[(conf >= lo) & (conf < hi)].mean()
                                                             - conf[(conf >= lo) & (conf < hi)].mean()))
                  for lo, hi in zip(edges[:-1], edges[1:]) if ((conf >= lo) & (conf < hi)).any())
        ax.plot(xs, ys, "o-", label="%s (ECE %.3f)" % (name, ece))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title("Slice classifier calibration (n=%d)" % len(labels))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


def fit_score_threshold(per_scan: List[dict], max_fp_per_scan: int = 1,
                        grid: Sequence[float] = THRESHOLD_GRID) -> dict:
    """The lowest grid threshold meeting the FP budget on every scan with big nodules found.

    ``per_scan``: {"name", "fp_scores": [...], "big_lesion_scores": [best score of a matching
    finding per lesion >= 10 mm, 0 when unmatched]}. Falls back to the highest grid value
    when nothing meets the budget.
    """
    table = []
    chosen = None
    for t in grid:
        worst_fp = max((sum(1 for s in sc["fp_scores"] if s >= t) for sc in per_scan), default=0)
        found = all(s >= t for sc in per_scan for s in sc["big_lesion_scores"])
        table.append({"threshold": t, "max_fp_per_scan": worst_fp, "all_big_found": found})
        if chosen is None and worst_fp <= max_fp_per_scan and found:
            chosen = t
    if chosen is None:
        chosen = float(grid[-1])
    return {"score_threshold": float(chosen), "table": table,
            "rule": "lowest threshold with <= %d FP on every calibration scan and every "
                    ">= 10 mm nodule found" % max_fp_per_scan}


def calibrate(model=None, data: str = "default", manifest: str = "volumes",
              device: str = "cpu", max_fp_per_scan: int = 0, max_per_source: Optional[int] = None,
              output: Optional[str] = None, progress: bool = True) -> dict:
    """Fit and write ``calibration.json`` into the model folder; returns what was written."""
    from ChestCTMTLLib import calibration as C
    from ChestCTMTLLib import paths
    from ChestCTMTLLib.inference import Analyzer, resolve_device, resolve_model
    from ChestCTMTLLib.options import AnalysisOptions

    t0 = time.time()
    dev = resolve_device(device)
    loaded = resolve_model(model, dev)
    folder = Path(loaded.folder)
    out_dir = Path(output) if output else folder
    out_dir.mkdir(parents=True, exist_ok=True)
    data_root = paths.data_root()

    log.info("calibrate: slice temperature")
    probs, labels, sources = slice_probabilities(loaded, data, dev, max_per_source)
    temperature, t_fit = C.fit_temperature(probs, labels)
    t_fit["sources"] = {s: int(sum(1 for x in sources if x == s)) for s in sorted(set(sources))}
    reliability_plot(probs, labels, temperature, out_dir / "calibration_reliability.png")

    log.info("calibrate: nodule shape rules from LIDC VOIs")
    masks = voi_masks(data_root)
    display = C.fit_shape_rules(masks, low_pct=1.0, high_pct=99.0)
    evidence = C.fit_shape_rules(masks, low_pct=5.0, high_pct=95.0)

    data_out = dict(C.DEFAULTS)
    data_out.update({
        "fitted": True,
        "model_sha256": loaded.identity.sha256,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m ChestCTMTLTraining calibrate --model %s" % folder.name,
        "temperature": round(float(temperature), 4),
        "temperature_fit": t_fit,
        "shape_rules": {"by_slice_mm": display, "percentiles": [1, 99],
                        "fitted_on": "%d LIDC nodule VOIs (excluding %s)"
                                     % (len(masks), ", ".join(EXCLUDED_VOI_PATIENTS))},
        "evidence_shape_rules": {"by_slice_mm": evidence, "percentiles": [5, 95],
                                 "fitted_on": "same VOIs"},
    })

    log.info("calibrate: operating point on the calibration scans")
    from .evaluate_volumes import calibration_scan_scores

    cal = C.Calibration(data_out)
    analyzer = Analyzer(loaded, AnalysisOptions(device=dev, score_threshold=0.0), calibration=cal)
    per_scan = calibration_scan_scores(analyzer, manifest, roles=("calibration",), progress=progress)
    fit = fit_score_threshold(per_scan, max_fp_per_scan)
    data_out["score_threshold"] = fit["score_threshold"]
    data_out["score_threshold_fit"] = {"scans": [s["name"] for s in per_scan],
                                       "max_fp_per_scan": max_fp_per_scan, "rule": fit["rule"],
                                       "table": fit["table"]}
    data_out["fitted_on"] = {
        "temperature": "held-out / unseen labelled slices: %s" % ", ".join(sorted(t_fit["sources"])),
        "shape_rules": data_out["shape_rules"]["fitted_on"],
        "score_threshold": "calibration scans: %s" % ", ".join(s["name"] for s in per_scan),
    }
    path = C.write_calibration(folder, data_out)
    summary = {"calibration": str(path), "temperature": data_out["temperature"],
               "temperature_fit": t_fit, "score_threshold": data_out["score_threshold"],
               "calibration_scans": [s["name"] for s in per_scan],
               "elapsed_s": round(time.time() - t0, 1)}
    paths.atomic_write_text(out_dir / "calibration_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
