"""Write Resources/MODEL_CARD.md for the bundled model from files, never from typed numbers.

    python scripts/render_model_card.py --validation EVAL_DIR --external EVAL_DIR

EVAL_DIRs are ``python -m ChestCTMTLTraining evaluate`` outputs (validation split of the default
config, and the external_pyradiomics config); ``--volumes`` is an ``evaluate-volumes`` output
(default docs/evaluation) and the calibration section is read from the model's calibration.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "ChestCTMTL"), str(REPO)]

from ChestCTMTLLib.modelio import default_model_dir, read_card  # noqa: E402
from ChestCTMTLLib.paths import data_root  # noqa: E402
from ChestCTMTLTraining.modelcard import render  # noqa: E402


def calibration_section(model_dir: Path) -> str:
    """What calibration.json holds and what it was fitted on (from the file itself)."""
    from ChestCTMTLLib.calibration import CALIBRATION_FILE

    path = model_dir / CALIBRATION_FILE
    if not path.is_file():
        return "## Calibration\n\nNo calibration.json: the analysis runs on the defaults."
    c = json.loads(path.read_text())
    tf = c.get("temperature_fit", {})
    fit = c.get("score_threshold_fit", {})
    rules = c.get("shape_rules", {}).get("by_slice_mm", [])
    ev = c.get("evidence_shape_rules", {}).get("by_slice_mm", [])
    lines = ["## Calibration (`calibration.json`, `python -m ChestCTMTLTraining calibrate`)", "",
             "| what | value | fitted on |", "|---|---|---|",
             "| slice temperature | %.3f (NLL %s → %s, n = %s) | %s |" % (
                 c.get("temperature", 1.0), tf.get("nll_before"), tf.get("nll_after"), tf.get("n"),
                 ", ".join("%s %d" % kv for kv in sorted(tf.get("sources", {}).items()))),
             "| score threshold (operating point) | %.2f | %s: %s |" % (
                 c.get("score_threshold", 0.0), ", ".join(fit.get("scans", [])), fit.get("rule", "")),
             "| nodule shape rules (listing: 1st / 99th pct) | %s | %s |" % (
                 "; ".join("%g mm: z-ratio ≥ %.2f, elongation ≤ %.2f" % (t, r["min_z_ratio"], r["max_elongation"])
                           for t, r in rules), c.get("shape_rules", {}).get("fitted_on", "")),
             "| nodule shape rules (evidence: 5th / 95th pct) | %s | same |" % (
                 "; ".join("%g mm: ≥ %.2f, ≤ %.2f" % (t, r["min_z_ratio"], r["max_elongation"]) for t, r in ev)),
             "| verdict thresholds (not fitted: priors) | %s | — |" % ", ".join(
                 "%s %s" % kv for kv in sorted(c.get("verdict", {}).items())), ""]
    lines.append("The slice temperature is large: the classifier is over-confident on slices from "
                 "hospitals it never saw (SARS-CoV-2 CT dominates the fit), so the verdict leans on the "
                 "findings. The likelihood ratios of the evidence are in `ChestCTMTLLib/verdict.py`.")
    return "\n".join(lines)


def volumes_section(volumes: Path) -> str:
    """The whole-CT evaluation (``evaluate-volumes``) as a table, read from its metrics.json."""
    m = json.loads((volumes / "metrics.json").read_text())
    lines = ["## Whole CTs: the shipped pipeline (`python -m ChestCTMTLTraining evaluate-volumes`)", "",
             "Every whole CT we have, through exactly the stages `chestctmtl analyze` runs; role "
             "*calibration* scans fixed the score threshold, *validation* scans did not (but the "
             "pipeline's rules were designed while looking at all seven: see limits).", "",
             "| scan | role | label | verdict | p(non-covid / covid / cancer) | findings at op | "
             "nodule FP at op | lesions found | outside lungs | lungs R / L mL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in m["scans"]:
        p = r["probabilities"]
        det = r.get("detection") or {}
        les = det.get("lesions") or []
        found = "%d/%d" % (sum(1 for x in les if x.get("found_at_operating_point")), len(les)) \
            if les else "—"
        fp = (det.get("operating_point") or {}).get("false_positives", "—")
        lv = r.get("lung_volumes_ml", {})
        lines.append("| %s | %s | %s | %s | %.3f / %.3f / %.3f | %d | %s | %s | %d | %s / %s |" % (
            r["name"], r["role"], r["class"], r["verdict"], p["non-covid"], p["covid"], p["cancer"],
            r["findings_at_op"], fp, found, r["outside_lung"]["at_op"], lv.get("right"), lv.get("left")))
    h = m["headline"].get("all", {})
    lines += ["", "All: verdict accuracy %s; %s lesions, CPM %s, sensitivity at 1 FP/scan %s; at the "
              "operating point %s found, %s ranked first, %s nodule FP/scan, %s findings outside the lungs "
              "per scan." % (h.get("verdict_accuracy"), h.get("lesions"), h.get("cpm"),
                             h.get("sensitivity_at_1fp"), h.get("op_ge10mm_found"),
                             h.get("op_ge10mm_ranked_first"), h.get("op_fp_per_scan"),
                             h.get("outside_lung_per_scan_at_op")),
              "", "Per-scan pictures, FROC and confusion matrix: [docs/evaluation](../docs/evaluation/report.md)."]
    return "\n".join(lines)


def ablation_section(md: Path) -> str:
    text = md.read_text()
    start = text.index("## On one GPU")
    end = text.index("## Earlier, on the 2-core CPU")
    body = text[start:end].strip().replace("## On one GPU", "## Ablation on one GPU", 1)
    return body.replace("### What this table says", "#### What this table says") + \
        "\n\nEarlier CPU tables and the full discussion: [docs/ablation.md](../docs/ablation.md)."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--validation", type=Path, required=True)
    p.add_argument("--external", type=Path, required=True)
    p.add_argument("--volumes", type=Path, default=REPO / "docs" / "evaluation",
                   help="evaluate-volumes output (metrics.json)")
    p.add_argument("--ablation", type=Path, default=REPO / "docs" / "ablation.md")
    p.add_argument("--output", type=Path, default=REPO / "Resources" / "MODEL_CARD.md")
    a = p.parse_args(argv)
    model_dir = a.model or default_model_dir()
    card = read_card(model_dir)
    metrics = json.loads((a.validation / "metrics.json").read_text())
    external = json.loads((a.external / "metrics.json").read_text())
    rel = model_dir.resolve().relative_to(REPO)
    extra = []
    tr = card.get("training", {})
    if tr.get("commands"):
        extra.append("## Exactly how it was trained\n\n```\n%s\n```\n\n%s; %s." % (
            "\n".join(tr["commands"]), tr.get("recipe", ""), tr.get("wall_time_note", "")))
    lines = ["## External test: PyRadiomics lung1 / lung2 (NSCLC, never trained on)", "",
             "`python -m ChestCTMTLTraining evaluate --model %s --data external_pyradiomics --output eval-external`" % rel, ""]
    for scan, s in external.get("scans", {}).items():
        d = s.get("detection", {})
        for les in d.get("lesions", []):
            lines.append("- %s detection: tumour %.1f mm %s (score %.3f, FPs scoring at least as high: %d); "
                         "FPs at score >= 0.3: %d, >= 0.5: %d" % (
                             scan, les["diameter_mm"], "FOUND" if les["found"] else "MISSED",
                             les["score"] or 0.0, les["false_positives_at_its_score"],
                             d["false_positives_at_0.3"], d["false_positives_at_0.5"]))
    h = external["headline"]
    lines.append("- nodule-mass Dice on tumour slices %.3f; detection sensitivity at 1 FP/scan %.1f, CPM %.3f"
                 % (h["nodule_dice"], h["sensitivity_at_1fp"], h["froc_cpm"]))
    extra.append("\n".join(lines))
    extra.append(calibration_section(model_dir))
    extra.append(volumes_section(a.volumes))
    extra.append(ablation_section(a.ablation))
    cmd = "python -m ChestCTMTLTraining evaluate --model %s --data default --output eval" % rel
    text = render(card, metrics, cmd, curves="Models/%s/training_curves.png" % model_dir.name,
                  extra_sections=extra)
    tmp = a.output.with_name(a.output.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(a.output)
    print("wrote %s" % a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
