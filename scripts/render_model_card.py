"""Write Resources/MODEL_CARD.md for the bundled model from files, never from typed numbers.

    python scripts/render_model_card.py --validation EVAL_DIR --external EVAL_DIR

EVAL_DIRs are ``python -m ChestCTMTLTraining evaluate`` outputs (validation split of the default
config, and the external_pyradiomics config). The volume verdicts section runs the inference
engine on every whole CT in the data root and the PyRadiomics samples (about a minute on CPU).
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


def volume_verdicts(model_dir: Path):
    """(the findings' operating point, one row per whole CT): one Analyzer, one model load."""
    from ChestCTMTLLib.inference import Analyzer
    from ChestCTMTLLib.options import AnalysisOptions
    from ChestCTMTLLib.sample_data import sample_path
    from ChestCTMTLLib.volume_io import read_ct

    root = data_root()
    cases = [("LIDC-IDRI-0001 (training scan, DICOM)", root / "lidc" / "LIDC-IDRI-0001"),
             ("LIDC-IDRI-0002 (held-out scan, NIfTI)", root / "lidc" / "LIDC-IDRI-0002-nifti" / "image.nii.gz"),
             ("PyRadiomics lung1 (external, NRRD)", sample_path("lung1_image.nrrd")),
             ("PyRadiomics lung2 (external, NRRD)", sample_path("lung2_image.nrrd"))]
    analyzer = Analyzer(model_dir, AnalysisOptions(device="cpu"))
    rows = []
    for label, path in cases:
        if not Path(path).exists():
            rows.append({"case": label, "missing": str(path)})
            continue
        res = analyzer.apply(read_ct(path))
        scores = sorted((f.score for f in res.findings), reverse=True)
        rows.append({"case": label, "verdict": res.predicted_class,
                     "probabilities": {k: round(v, 3) for k, v in res.class_probabilities.items()},
                     "findings": len(scores), "top_scores": [round(s, 3) for s in scores[:3]]})
    return analyzer.score_threshold, rows


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
    threshold, rows = volume_verdicts(model_dir)
    v = ["## Whole-volume verdicts (inference engine, `chestctmtl analyze`)", "",
         "Does the classifier key on the source? Every whole CT we have is cancer-bearing; a verdict "
         "of non-covid on them is a miss, covid would be a source artefact.", "",
         "| case | verdict | non-covid / covid / cancer | findings (score >= %g, the model's "
         "operating point) | top scores |" % threshold,
         "|---|---|---|---|---|"]
    for r in rows:
        if "missing" in r:
            v.append("| %s | (not available: %s) | | | |" % (r["case"], r["missing"]))
            continue
        pr = r["probabilities"]
        v.append("| %s | %s | %.3f / %.3f / %.3f | %d | %s |" % (
            r["case"], r["verdict"], pr["non-covid"], pr["covid"], pr["cancer"], r["findings"],
            ", ".join("%.3f" % s for s in r["top_scores"])))
    extra.append("\n".join(v))
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
