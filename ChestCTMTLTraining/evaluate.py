"""Evaluate a model folder on a config's validation split: metrics.json + report.md + plots.

What is measured where (so the numbers can be compared with published ones):
* segmentation on 2D image sources (COVID-SemiSeg) at each image's ORIGINAL size: the sigmoid
  output is mapped back through the representation's inverse and thresholded at 0.5; on volume
  slices and MSD mosaics on the model grid. Dice / IoU are per-slice means over slices whose
  ground truth is non-empty; HD95 in pixels of that grid.
* classification per slice; ``cancer_vs_normal`` restricts to slices labelled non-covid or
  cancer and compares p(cancer) with p(non-covid).
* detection: slice AP@0.5 against boxes of mask components (as in training), and per held-out
  whole scan a nodule/mass FROC of the findings the shipped pipeline reports
  (``Analyzer.apply`` with score threshold 0, the same run ``chestctmtl analyze`` makes), hit =
  centre within max(lesion radius, 5 mm); per-scan numbers from
  :func:`.metrics.scan_detection`, shared with ``evaluate-volumes``.
* reconstruction PSNR / SSIM on the model grid (unit intensity, data range 1).
* infection types (a model with ``infection_types``) on the held-out multi-class slices, at
  their original size: each infected pixel (covid-infection >= 0.5) goes to its most probable
  type (``model.infection_type_masks``, as ``predict`` writes them); per-slice mean Dice over
  slices holding the type and the pooled Dice (:func:`.metrics.infection_type_scores`).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ChestCTMTLLib.inference import Analyzer, resolve_device, resolve_model
from ChestCTMTLLib.model import (INFECTION, detections_from_outputs, infection_type_masks,
                                 infection_type_probabilities)
from ChestCTMTLLib.options import AnalysisOptions
from ChestCTMTLLib.paths import atomic_write_text
from ChestCTMTLLib.representation import SliceGeometry
from ChestCTMTLLib.volume_io import read_ct

from .batching import boxes_from_mask, eval_items
from .config import load_config
from .loading import load_split
from .sources.base import TYPES_KIND, json_default, read_gt_labels, read_gt_original
from .metrics import (average_precision, binary_scores, classification_scores, detection_summary,
                      froc, infection_type_scores, recon_scores, scan_detection, seg_scores)

log = logging.getLogger("ChestCTMTLTraining")


def geometry_from_dict(d: dict) -> SliceGeometry:
    return SliceGeometry(tuple(d["in_shape"]), int(d["row0"]), int(d["col0"]), int(d["side"]),
                         int(d["input_size"]))


def _nanmean(v):
    v = [x for x in v if x == x]
    return float(np.mean(v)) if v else float("nan")


def evaluate_model(model=None, data="default", output="eval", split: str = "val",
                   max_per_source: Optional[int] = None, overrides: Optional[dict] = None,
                   batch_size: int = 16, det_threshold: float = 0.05, probe_format: bool = True,
                   device: str = "cpu") -> dict:
    t0 = time.time()
    device = resolve_device(device)
    lm = resolve_model(model or None, device=device)
    net, mcfg, rep = lm.model, lm.config, lm.representation
    cfg = load_config(data, overrides)
    specs = [dict(s) for s in cfg["sources"]]
    if max_per_source:
        for s in specs:
            s["max_samples"] = max_per_source
    sets = load_split(cfg, split, rep, mcfg.lesion_types, specs)
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = mcfg.tasks
    types = list(mcfg.lesion_types)
    cls_true, cls_prob, cls_src, cls_id = [], [], [], []
    seg_rows: Dict[str, List[dict]] = {t: [] for t in types}
    empty_fp: Dict[str, List[float]] = {t: [] for t in types}
    recon_rows = []
    type_rows: List[dict] = []
    det_preds: Dict[str, list] = {t: [] for t in types}
    det_gts: Dict[str, dict] = {t: {} for t in types}
    examples = []
    files_used = {}
    for s in sets:
        files_used[s.name] = [m.get("image", "") or i for i, m in zip(s.ids, s.meta or [{}] * len(s))] \
            if s.kind != "patch" else sorted({i.split("#")[0] for i in s.ids})
        items = list(eval_items(s, rep.input_size, mcfg.det_stride))
        for b0 in range(0, len(items), batch_size):
            chunk = items[b0:b0 + batch_size]
            x = torch.stack([it["image"] for _id, it, _m in chunk])
            with torch.inference_mode():
                out = {k: v.float().cpu() for k, v in net(x.to(device), tasks=tasks).items()}
            if "detection" in tasks:
                dets = detections_from_outputs(out, mcfg.det_stride, types, det_threshold)
            for n, (sid, it, meta) in enumerate(chunk):
                meta = meta or {}
                if "class_logits" in out and it["cls"] >= 0:
                    cls_true.append(it["cls"])
                    cls_prob.append(torch.softmax(out["class_logits"][n].float(), 0).numpy())
                    cls_src.append(s.name)
                    cls_id.append(sid)
                if "seg_logits" in out:
                    prob = torch.sigmoid(out["seg_logits"][n].float())
                    for t, tname in enumerate(types):
                        if not bool(it["present"][t]):
                            continue
                        if meta.get("mask") and meta.get("geometry"):
                            geom = geometry_from_dict(meta["geometry"])
                            p = geom.to_input(prob[t][None, None])[0, 0].numpy() >= 0.5
                            g = read_gt_original(meta) if t == types.index("covid-infection") \
                                else np.zeros(p.shape, bool)
                            grid = "original"
                        else:
                            p = prob[t].numpy() >= 0.5
                            g = it["masks"][t].numpy() >= 0.5
                            grid = "model"
                        if g.any():
                            r = seg_scores(p, g)
                            r.update({"id": sid, "source": s.name, "grid": grid})
                            seg_rows[tname].append(r)
                        else:
                            empty_fp[tname].append(float(p.mean()))
                        if len(examples) < 8 and g.any() and t == 0 and n == 0:
                            examples.append((sid, it["image"][0].numpy(), it["masks"][t].numpy(),
                                             prob[t].numpy()))
                if "type_logits" in out and meta.get("kind") == TYPES_KIND and meta.get("geometry"):
                    type_rows.append(_type_row(out, n, mcfg, meta, s.name))
                if "recon" in out:
                    r = recon_scores(it["image"][0].numpy(), out["recon"][n, 0].float().numpy())
                    r["source"] = s.name
                    recon_rows.append(r)
                if "detection" in tasks:
                    key = "%s|%s" % (s.name, sid)
                    for t, tname in enumerate(types):
                        if not bool(it["present"][t]):
                            continue
                        det_gts[tname][key] = boxes_from_mask(it["masks"][t].numpy())
                        for d in dets[n]:
                            if d.type_index == t:
                                det_preds[tname].append((key, d.score, (d.x0, d.y0, d.x1, d.y1)))
    metrics: dict = {"model": lm.card.get("id"), "model_sha256": lm.identity.sha256,
                     "data_config": cfg.get("_path"), "data_pack": cfg.get("data_pack"), "split": split,
                     "samples": {s.name: len(s) for s in sets}, "files": files_used}
    # classification
    if cls_true:
        prob = np.stack(cls_prob)
        metrics["classification"] = classification_scores(cls_true, prob, mcfg.class_names)
        ci = {c: i for i, c in enumerate(mcfg.class_names)}
        by_src = {}
        for src in sorted(set(cls_src)):
            idx = [i for i, s_ in enumerate(cls_src) if s_ == src]
            by_src[src] = classification_scores([cls_true[i] for i in idx], prob[idx], mcfg.class_names)
        metrics["classification_by_source"] = by_src
        cn = [i for i, y in enumerate(cls_true) if y in (ci["non-covid"], ci["cancer"])]
        if cn:
            y = [1 if cls_true[i] == ci["cancer"] else 0 for i in cn]
            pc = prob[cn, ci["cancer"]] / np.maximum(prob[cn, ci["cancer"]] + prob[cn, ci["non-covid"]], 1e-9)
            metrics["cancer_vs_normal"] = binary_scores(y, pc, ("non-covid", "cancer"))
            src_cn = {}
            for src in sorted({cls_src[i] for i in cn}):
                sel = [j for j, i in enumerate(cn) if cls_src[i] == src]
                src_cn[src] = binary_scores([y[j] for j in sel], pc[sel], ("non-covid", "cancer"))
            metrics["cancer_vs_normal_by_source"] = src_cn
    # segmentation
    seg = {}
    for tname in types:
        rows = seg_rows[tname]
        by_src = {}
        for src in sorted({r["source"] for r in rows}):
            rr = [r for r in rows if r["source"] == src]
            by_src[src] = {"n": len(rr), "grid": rr[0]["grid"], "dice": _nanmean([r["dice"] for r in rr]),
                           "iou": _nanmean([r["iou"] for r in rr]), "hd95": _nanmean([r["hd95"] for r in rr])}
        seg[tname] = {"n": len(rows), "dice": _nanmean([r["dice"] for r in rows]),
                      "iou": _nanmean([r["iou"] for r in rows]), "hd95": _nanmean([r["hd95"] for r in rows]),
                      "by_source": by_src,
                      "lesion_free_slices": {"n": len(empty_fp[tname]),
                                             "mean_fp_fraction": _nanmean(empty_fp[tname])}}
    if seg_rows and any(seg_rows.values()):
        metrics["segmentation"] = seg
    if type_rows:
        by_src = {src: infection_type_scores([r for r in type_rows if r["source"] == src], mcfg.infection_types)
                  for src in sorted({r["source"] for r in type_rows})}
        metrics["infection_types"] = {"grid": "original", "types": infection_type_scores(type_rows, mcfg.infection_types),
                                      "by_source": by_src}
    if recon_rows:
        metrics["reconstruction"] = {"n": len(recon_rows), "psnr": _nanmean([r["psnr"] for r in recon_rows]),
                                     "ssim": _nanmean([r["ssim"] for r in recon_rows]),
                                     "by_source": {src: {"psnr": _nanmean([r["psnr"] for r in recon_rows if r["source"] == src]),
                                                         "ssim": _nanmean([r["ssim"] for r in recon_rows if r["source"] == src])}
                                                   for src in sorted({r["source"] for r in recon_rows})}}
    if "detection" in tasks:
        ap = {t: average_precision(det_preds[t], det_gts[t]) for t in types}
        metrics["detection_slices"] = {"ap50": ap, "map50": _nanmean(list(ap.values())),
                                       "score_threshold": det_threshold}
    # per held-out whole scan: the shipped pipeline, as evaluate-volumes runs it
    scans_det = []
    volumes = [v for s in sets for v in s.volumes]
    if volumes and {"segmentation", "detection"} & set(tasks):
        vol_report, scans_det, skipped = held_out_scans(lm, volumes, device)
        metrics["scans"] = vol_report
        if skipped:
            metrics["scans_skipped"] = skipped
        if scans_det:
            op = scans_det[0]["operating_point"]["score_threshold"]
            metrics["detection_froc"] = detection_summary(scans_det, op)
            big = [{"findings": d["findings"], "lesions": [les for les in d["lesions"] if les["big"]]}
                   for d in scans_det]
            metrics["detection_froc_ge10mm"] = _strip_curve(froc(big))
    if probe_format and "classification" in tasks:
        metrics["format_sensitivity"] = format_probe(net, rep, sets, mcfg)
    metrics["headline"] = headline(metrics)
    metrics["elapsed_s"] = round(time.time() - t0, 1)
    write_report(metrics, out_dir, examples, scans_det)
    return metrics


def _type_row(out: dict, n: int, mcfg, meta: dict, source: str) -> dict:
    """One held-out multi-class slice: predicted type masks and its label map, original size."""
    geom = geometry_from_dict(meta["geometry"])
    q = infection_type_probabilities(out["seg_logits"][n:n + 1], out["type_logits"][n:n + 1], mcfg)
    p_inf = torch.sigmoid(out["seg_logits"][n:n + 1, list(mcfg.lesion_types).index(INFECTION)].float())
    p_inf = geom.to_input(p_inf[:, None])[0, 0].numpy()
    q = geom.to_input(q)[0].numpy()
    return {"source": source, "pred": infection_type_masks(p_inf, q), "gt": read_gt_labels(meta)}


def volume_lesions(vol: dict) -> List[dict]:
    """A held-out volume's reference nodules in RAS mm from its data-loader entry."""
    m = np.asarray(vol["ijk_to_ras"], float)
    return [{"center_mm": (m @ np.array([n["centroid_kji"][2], n["centroid_kji"][1],
                                         n["centroid_kji"][0], 1.0]))[:3],
             "diameter_mm": float(n["diameter_mm"])} for n in vol["nodules"]]


def held_out_scans(lm, volumes: List[dict], device: str):
    """Every held-out whole scan through ``Analyzer.apply`` (score threshold 0: every kept
    candidate) and :func:`.metrics.scan_detection` at the model's operating point.

    Returns ({scan: report entry}, [scan_detection results], [skipped scans with reasons]);
    a scan whose source file is absent (e.g. evaluated from a data pack elsewhere) is skipped.
    """
    analyzer = Analyzer(lm, AnalysisOptions(device=device, score_threshold=0.0))
    op = float(analyzer.calibration.score_threshold)
    report, dets, skipped = {}, [], []
    for vol in volumes:
        src = vol.get("source")
        if not src or not Path(src).exists() or "ijk_to_ras" not in vol:
            why = ("source %s not available" % src) if src and not Path(src).exists() \
                else "no source path / geometry recorded (an older data pack?)"
            skipped.append("%s: %s" % (vol["scan"], why))
            continue
        t = time.perf_counter()
        res = analyzer.apply(read_ct(src))
        det = scan_detection(res.findings, volume_lesions(vol), op)
        dets.append(det)
        entry = {"lesions": [{"diameter_mm": les["diameter_mm"], "center_ras": les["center_mm"]}
                             for les in det["lesions"]],
                 "detection": {k: v for k, v in det.items() if k != "findings"},
                 "verdict": res.predicted_class,
                 "probabilities": {k: round(float(v), 4) for k, v in res.class_probabilities.items()},
                 "findings": [f.row() for f in res.findings if f.score >= op],
                 "seconds": round(time.perf_counter() - t, 2)}
        p = res.slice_probabilities
        if p is not None and len(p):
            names = list(lm.config.class_names)
            entry["classification"] = {
                "mean_slice_probabilities": dict(zip(names, p.mean(0).round(4).tolist())),
                "slice_votes": dict(zip(names, np.bincount(p.argmax(1), minlength=len(names)).tolist())),
                "top10_mean_probabilities": dict(zip(names, np.sort(p, axis=0)[-10:].mean(0).round(4).tolist()))}
        report[vol["scan"]] = entry
    return report, dets, skipped


def _strip_curve(d: dict) -> dict:
    d = dict(d)
    d.pop("curve", None)
    return d


def format_probe(net, rep, sets, mcfg, n_max: int = 40) -> dict:
    """How slice class outputs move when only the format changes (same pixels re-encoded).

    For up to ``n_max`` held-out 2D slices per source: PNG->JPG (quality 75) re-encoding, the
    image at half and double size, and another display window (contrast x1.3, gamma 0.8).
    Reported: mean absolute change of the three probabilities and the fraction of slices whose
    predicted class flips. Large values mean the classifier keys on format, not anatomy.
    """
    import io

    from PIL import Image

    from ChestCTMTLLib.representation import gray8_to_model, gray8_to_unit

    out = {}
    for s in sets:
        metas = [m for m in (s.meta or []) if m.get("image") and os.path.isfile(m["image"])]  # absent when packed
        if not metas:
            continue
        idx = np.linspace(0, len(metas) - 1, min(n_max, len(metas))).round().astype(int)
        variants = {"jpeg_q75": [], "half_size": [], "double_size": [], "other_window": []}
        base_p = []
        for i in idx:
            with Image.open(metas[i]["image"]) as im:
                g = im.convert("L")
                g.load()
            arr = np.asarray(g)

            def probs(a):
                x, _ = gray8_to_model(gray8_to_unit(a), rep)
                with torch.inference_mode():
                    x = x.to(next(net.parameters()).device)
                    return torch.softmax(net(x, tasks=["classification"])["class_logits"][0].float().cpu(), 0).numpy()

            p0 = probs(arr)
            base_p.append(p0)
            buf = io.BytesIO()
            g.save(buf, format="JPEG", quality=75)
            buf.seek(0)
            v = {"jpeg_q75": np.asarray(Image.open(buf).convert("L")),
                 "half_size": np.asarray(g.resize((max(32, g.width // 2), max(32, g.height // 2)), Image.BILINEAR)),
                 "double_size": np.asarray(g.resize((g.width * 2, g.height * 2), Image.BILINEAR)),
                 "other_window": np.clip(((arr / 255.0) ** 0.8 - 0.5) * 1.3 + 0.5, 0, 1) * 255}
            for k, a in v.items():
                variants[k].append((p0, probs(a.astype(np.uint8))))
        res = {}
        for k, pairs in variants.items():
            d = np.array([np.abs(a - b).mean() for a, b in pairs])
            flips = np.array([a.argmax() != b.argmax() for a, b in pairs])
            res[k] = {"mean_abs_prob_change": float(d.mean()), "class_flip_rate": float(flips.mean())}
        res["n"] = int(len(idx))
        out[s.name] = res
    return out


def headline(m: dict) -> dict:
    h = {}
    seg = m.get("segmentation", {})
    if "covid-infection" in seg:
        h["covid_dice"] = seg["covid-infection"]["dice"]
        h["covid_dice_by_source"] = {k: v["dice"] for k, v in seg["covid-infection"]["by_source"].items()}
    if "nodule-mass" in seg:
        h["nodule_dice"] = seg["nodule-mass"]["dice"]
    for name, key in (("ground-glass opacity", "ggo"), ("consolidation", "consolidation")):
        t = m.get("infection_types", {}).get("types", {}).get(name)
        if t:
            h[key + "_dice"] = t["dice"]
            h[key + "_dice_pooled"] = t["dice_pooled"]
    if "classification" in m:
        h["accuracy"] = m["classification"]["accuracy"]
        h["balanced_accuracy"] = m["classification"]["balanced_accuracy"]
    if "cancer_vs_normal" in m:
        h["cancer_vs_normal_balanced_accuracy"] = m["cancer_vs_normal"]["balanced_accuracy"]
    if "reconstruction" in m:
        h["recon_psnr"] = m["reconstruction"]["psnr"]
        h["recon_ssim"] = m["reconstruction"]["ssim"]
    if "detection_slices" in m:
        h["slice_map50"] = m["detection_slices"]["map50"]
    if "detection_froc" in m:
        h["froc_cpm"] = m["detection_froc"]["cpm"]
        h["sensitivity_at_1fp"] = m["detection_froc"]["sensitivity"].get("1.0")
    if "detection_froc_ge10mm" in m:
        h["ge10mm_sensitivity_at_1fp"] = m["detection_froc_ge10mm"]["sensitivity"].get("1.0")
    return h


def write_report(m: dict, out_dir: Path, examples, scans_det) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    for key in ("classification", "cancer_vs_normal"):
        if key in m and m[key].get("confusion_matrix"):
            cm = np.array(m[key]["confusion_matrix"])
            labels = m[key]["confusion_labels"]
            fig, ax = plt.subplots(figsize=(4, 3.6))
            ax.imshow(cm, cmap="Blues")
            for (i, j), v in np.ndenumerate(cm):
                ax.text(j, i, str(v), ha="center", va="center")
            ax.set_xticks(range(len(labels)), labels, rotation=30)
            ax.set_yticks(range(len(labels)), labels)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(key)
            fig.tight_layout()
            name = "confusion_%s.png" % key
            fig.savefig(out_dir / name, dpi=100)
            plt.close(fig)
            figs.append(name)
    if scans_det:
        f = froc(scans_det)
        if f.get("curve") and f["curve"]["fp_per_scan"]:
            fig, ax = plt.subplots(figsize=(4.5, 3.5))
            ax.step(np.maximum(f["curve"]["fp_per_scan"], 1e-3), f["curve"]["sensitivity"], where="post")
            ax.set_xscale("log")
            ax.set_xlabel("false positives per scan")
            ax.set_ylabel("sensitivity")
            ax.set_ylim(0, 1.05)
            ax.set_title("Nodule/mass FROC, held-out scans (n = %d lesions)" % f["lesions"], fontsize=9)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(out_dir / "froc.png", dpi=100)
            plt.close(fig)
            figs.append("froc.png")
    if examples:
        fig, axes = plt.subplots(len(examples), 3, figsize=(7.5, 2.5 * len(examples)))
        axes = np.atleast_2d(axes)
        for row, (sid, img, gt, pr) in zip(axes, examples):
            row[0].imshow(img, cmap="gray")
            row[0].set_title(sid[-30:], fontsize=7)
            row[1].imshow(gt, cmap="magma")
            row[1].set_title("ground truth", fontsize=7)
            row[2].imshow(pr, cmap="magma", vmin=0, vmax=1)
            row[2].set_title("prediction", fontsize=7)
            for a in row:
                a.axis("off")
        fig.tight_layout()
        fig.savefig(out_dir / "segmentation_examples.png", dpi=90)
        plt.close(fig)
        figs.append("segmentation_examples.png")
    atomic_write_text(out_dir / "metrics.json", json.dumps(m, indent=2, default=json_default))
    lines = ["# Evaluation of %s" % m.get("model"), "",
             "Data config: `%s`, split `%s`; samples: %s" % (m.get("data_config"), m.get("split"),
                                                              ", ".join("%s %d" % kv for kv in m["samples"].items())),
             "", "## Headline", "", "| metric | value |", "|---|---|"]
    for k, v in m["headline"].items():
        lines.append("| %s | %s |" % (k, json.dumps(v, default=json_default) if isinstance(v, dict) else
                                    ("%.4f" % v if isinstance(v, float) else v)))
    if "segmentation" in m:
        lines += ["", "## Segmentation", "", "| lesion type | source | grid | n | Dice | IoU | HD95 (px) |",
                  "|---|---|---|---|---|---|---|"]
        for t, d in m["segmentation"].items():
            for src, r in d["by_source"].items():
                lines.append("| %s | %s | %s | %d | %.3f | %.3f | %.1f |" % (t, src, r["grid"], r["n"], r["dice"],
                                                                          r["iou"], r["hd95"]))
    if "infection_types" in m:
        lines += ["", "## Infection types (held-out multi-class slices, original size)", "",
                  "| type | source | slices with type | Dice (per slice) | IoU | Dice (pooled) |",
                  "|---|---|---|---|---|---|"]
        for src, d in m["infection_types"]["by_source"].items():
            for t, r in d.items():
                lines.append("| %s | %s | %d | %.3f | %.3f | %.3f |" % (t, src, r["n"], r["dice"], r["iou"],
                                                                     r["dice_pooled"]))
    if "classification" in m:
        c = m["classification"]
        lines += ["", "## Classification (slices)", "",
                  "accuracy %.3f, balanced accuracy %.3f, ROC AUC %s" % (c["accuracy"], c["balanced_accuracy"],
                                                                         "%.3f" % c["roc_auc"] if "roc_auc" in c else "n/a"),
                  "", "per-class F1: %s" % json.dumps({k: round(v, 3) for k, v in c["f1"].items()}),
                  "", "per-class recall: %s" % json.dumps({k: round(v, 3) for k, v in c["recall"].items()})]
        if "cancer_vs_normal" in m:
            cv = m["cancer_vs_normal"]
            lines += ["", "cancer vs normal: balanced accuracy %.3f, recall %s, confusion %s" % (
                cv["balanced_accuracy"], json.dumps({k: round(v, 3) for k, v in cv["recall"].items()}),
                cv["confusion_matrix"])]
    if "reconstruction" in m:
        lines += ["", "## Reconstruction", "", "PSNR %.2f dB, SSIM %.3f over %d held-out slices" % (
            m["reconstruction"]["psnr"], m["reconstruction"]["ssim"], m["reconstruction"]["n"])]
    if "detection_slices" in m:
        lines += ["", "## Detection", "", "slice AP@0.5: %s" % json.dumps(
            {k: (round(v, 3) if v == v else None) for k, v in m["detection_slices"]["ap50"].items()})]
    for key in ("detection_froc", "detection_froc_ge10mm"):
        if key in m:
            lines.append("")
            lines.append("%s: lesions %d, CPM %.3f, sensitivity at FP/scan %s" % (
                key, m[key]["lesions"], m[key]["cpm"], json.dumps(m[key]["sensitivity"])))
    if "scans" in m:
        lines += ["", "## Held-out scans", "", "```", json.dumps(m["scans"], indent=1, default=json_default), "```"]
    if "format_sensitivity" in m:
        lines += ["", "## Format sensitivity of the classifier", "", "```",
                  json.dumps(m["format_sensitivity"], indent=1), "```"]
    for f in figs:
        lines += ["", "![%s](%s)" % (f, f)]
    lines += ["", "Files evaluated: see `metrics.json` → `files`.", ""]
    atomic_write_text(out_dir / "report.md", "\n".join(lines))
