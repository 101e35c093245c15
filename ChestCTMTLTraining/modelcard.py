"""Render a readable MODEL_CARD.md from a model folder's card and its evaluation metrics.

Numbers are copied from ``metrics.json`` as written by ``evaluate`` (never typed by hand), so
re-running the evaluation command printed in the card reproduces them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

TARGETS = {
    "covid_dice": ("COVID-19 infection Dice (held-out COVID-SemiSeg doctor slices, original size)", 0.76),
    "cancer_vs_normal_balanced_accuracy": ("cancer vs normal balanced accuracy (held-out slices)", 0.97),
}


def _f(v, nd=3):
    if v is None:
        return "—"
    if isinstance(v, float):
        return "nan" if v != v else ("%.*f" % (nd, v))
    return str(v)


def render(card: dict, metrics: dict, eval_command: str, curves: Optional[str] = None,
           extra_sections: Optional[List[str]] = None) -> str:
    h = metrics.get("headline", {})
    L = ["# Model card — %s" % card.get("id"), "",
         "Version %s · SHA-256 of `model.safetensors`: `%s` · %s parameters · backbone `%s` · input %d×%d"
         % (card.get("version"), card.get("sha256"), "{:,}".format(card.get("parameters", 0)),
            card["architecture"]["backbone"], card["architecture"]["input_size"], card["architecture"]["input_size"]),
         "", "## Intended use", "", card.get("intended_use", ""), ""]
    L += ["## Input representation", "", card["representation"].get("description", ""), ""]
    L += ["## Training", ""]
    tr = card.get("training", {})
    timing = ""
    if tr.get("elapsed_s"):
        timing = " in %s s (%s s/step median)" % (tr.get("elapsed_s"), tr.get("seconds_per_step"))
    L.append("Recipe `%s`, regime `%s`, stages %s; %s steps%s on %s." % (
        tr.get("config"), tr.get("regime"),
        ", ".join("%s (%s, %d steps%s)" % (s["name"], "+".join(t[:3] for t in s["tasks"]), s["steps"],
                                           ", batch %s of %s px" % (s["batch_size"], s.get("crop_size") or "full")
                                           if s.get("batch_size") else "")
                  for s in tr.get("stages", [])),
        tr.get("steps_done"), timing, tr.get("device")))
    if tr.get("recipe"):
        L.append("")
        L.append("Schedule actually run: %s; %s." % (tr["recipe"], tr.get("wall_time_note", "")))
    L.append("")
    if card.get("training_data"):
        L += ["| training source | slices / patches |", "|---|---|"]
        L += ["| %s | %s |" % (d["source"], d["samples"]) for d in card["training_data"]]
        L.append("")
    for sec in card.get("data_provenance", []):
        L.append("- " + sec)
    L += ["", "## Validation split (never trained on)", ""]
    for src, files in metrics.get("files", {}).items():
        names = [Path(f).name if "/" in str(f) else str(f) for f in files]
        shown = ", ".join(names[:12]) + (" … (%d in all)" % len(names) if len(names) > 12 else "")
        L.append("- **%s** (%d): %s" % (src, len(names), shown))
    L += ["", "Full lists: `metrics.json` → `files` from the command below.", "",
          "## Validation metrics", "", "Reproduce with:", "", "```", eval_command, "```", ""]
    L += ["| metric | value | target |", "|---|---|---|"]
    for key, (label, target) in TARGETS.items():
        v = h.get(key)
        ok = "" if v is None else (" ✔" if v >= target else " ✘ (short)")
        L.append("| %s | %s | ≥ %.2f%s |" % (label, _f(v), target, ok))
    seg = metrics.get("segmentation", {})
    for t, d in seg.items():
        for src, r in d.get("by_source", {}).items():
            L.append("| %s segmentation on %s (%s grid, n=%d): Dice / IoU / HD95 px | %s / %s / %s | |" % (
                t, src, r["grid"], r["n"], _f(r["dice"]), _f(r["iou"]), _f(r["hd95"], 1)))
    if "classification" in metrics:
        c = metrics["classification"]
        L.append("| 3-class slice accuracy / balanced accuracy / ROC AUC (n=%d) | %s / %s / %s | |" % (
            c["n"], _f(c["accuracy"]), _f(c["balanced_accuracy"]), _f(c.get("roc_auc"))))
        L.append("| per-class F1 | %s | |" % ", ".join("%s %s" % (k, _f(v)) for k, v in c["f1"].items()))
        L.append("| per-class recall | %s | |" % ", ".join("%s %s" % (k, _f(v)) for k, v in c["recall"].items()))
    for src, b in metrics.get("cancer_vs_normal_by_source", {}).items():
        L.append("| cancer vs normal on %s (n=%d): balanced acc. / recall normal / recall cancer / confusion | "
                 "%s / %s / %s / %s | |" % (src, b["n"], _f(b["balanced_accuracy"]), _f(b["recall"]["non-covid"]),
                                           _f(b["recall"]["cancer"]), b["confusion_matrix"]))
    if "reconstruction" in metrics:
        r = metrics["reconstruction"]
        L.append("| reconstruction PSNR / SSIM (n=%d held-out slices) | %s dB / %s | reported |" % (
            r["n"], _f(r["psnr"], 2), _f(r["ssim"])))
    if "detection_slices" in metrics:
        L.append("| detection slice AP@0.5 | %s | |" % ", ".join(
            "%s %s" % (k, _f(v)) for k, v in metrics["detection_slices"]["ap50"].items()))
    for key, label in (("detection_froc_ge10mm", "held-out LIDC lesions ≥ 10 mm, shipped pipeline"),
                       ("detection_froc", "held-out LIDC lesions, shipped pipeline")):
        if key in metrics:
            f = metrics[key]
            L.append("| %s: sensitivity at 1 FP/scan, CPM (%d lesion(s)) | %s, %s | found with ≤ 1 FP |" % (
                label, f["lesions"], _f(f["sensitivity"].get("1.0")), _f(f["cpm"])))
    L.append("")
    for scan, s in metrics.get("scans", {}).items():
        L += ["### Held-out scan %s" % scan, ""]
        for key in ("detection", "segmentation_blobs"):
            if key in s:
                d = s[key]
                for les in d["lesions"]:
                    L.append("- %s: lesion %.1f mm %s (score %s; FPs scoring at least as high: %s); "
                             "FPs at score ≥ 0.3: %d, ≥ 0.5: %d" % (
                                 key, les["diameter_mm"], "FOUND" if les["found"] else "MISSED",
                                 _f(les["score"]), les["false_positives_at_its_score"],
                                 d["false_positives_at_0.3"], d["false_positives_at_0.5"]))
        if "classification" in s:
            L.append("- slice classifier on this scan: mean probabilities %s; slice votes %s" % (
                json.dumps(s["classification"]["mean_slice_probabilities"]),
                json.dumps(s["classification"]["slice_votes"])))
        L.append("")
    if "format_sensitivity" in metrics:
        L += ["## Does the classifier key on the source format?", "",
              "Held-out slices re-encoded without changing anatomy; mean |Δp| over the three classes and the "
              "share of slices whose predicted class flips:", "",
              "| source | JPG q75 | half size | double size | other window |", "|---|---|---|---|---|"]
        for src, r in metrics["format_sensitivity"].items():
            L.append("| %s (n=%d) | %s | %s | %s | %s |" % (src, r["n"], *[
                "%.3f / %.0f%%" % (r[k]["mean_abs_prob_change"], 100 * r[k]["class_flip_rate"])
                for k in ("jpeg_q75", "half_size", "double_size", "other_window")]))
        L.append("")
    for sec in extra_sections or []:
        L += [sec, ""]
    L += ["## Limits", ""]
    L += ["- " + x for x in card.get("limits", [])]
    if curves:
        L += ["", "## Training curves", "", "![training curves](%s)" % curves]
    L.append("")
    return "\n".join(L)


def write_model_card(model_dir, metrics_path, out_md, eval_command: str, curves: Optional[str] = None,
                     extra_sections: Optional[List[str]] = None) -> Path:
    from ChestCTMTLLib.modelio import read_card

    card = read_card(model_dir)
    metrics = json.loads(Path(metrics_path).read_text())
    text = render(card, metrics, eval_command, curves, extra_sections)
    out = Path(out_md)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return out
