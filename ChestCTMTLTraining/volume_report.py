"""The whole-CT evaluation's pictures and tables: FROC, confusion, one picture per scan,
``scans.tsv`` and ``report.md`` (:mod:`.evaluate_volumes` computes what they show, and takes
the names both use from here)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ChestCTMTLLib.paths import atomic_write_text
from ChestCTMTLLib.results import CLASS_NAMES

from .metrics import FROC_RATES, froc

#: scan roles of a manifest, and the groups every table reports
ROLES = ("calibration", "validation")
GROUPS = ROLES + ("all",)
INFECTION = "covid-infection"
SCANS_TSV_COLUMNS = (
    "name", "role", "class", "verdict", "p_non-covid", "p_covid", "p_cancer", "findings",
    "findings_at_op", "nodule_fp_at_op", "lesions", "lesions_found_at_op", "outside_lung_at_op",
    "outside_lung_all", "right_lung_ml", "left_lung_ml", "seconds")


def ras_to_ijk(volume, points) -> np.ndarray:
    """(N, 3) RAS mm -> (N, 3) continuous (i, j, k) indices of ``volume``."""
    pts = np.atleast_2d(np.asarray(points, float))
    inv = np.linalg.inv(np.asarray(volume.ijk_to_ras, float))
    return pts @ inv[:3, :3].T + inv[:3, 3]


# --------------------------------------------------------------------------- pictures
def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    """PNG written to a temporary sibling and renamed (never half-written)."""
    tmp = path.with_name("." + path.name + ".%d.tmp" % os.getpid())
    try:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def plot_froc(groups: Dict[str, List[dict]], path: Path) -> bool:
    curves = {g: froc(s) for g, s in groups.items() if s}
    curves = {g: f for g, f in curves.items() if f["lesions"]}
    if not curves:
        return False
    fig = _figure((5.0, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for g, f in curves.items():
        fp = np.concatenate([[0.0], f["curve"]["fp_per_scan"]])
        se = np.concatenate([[0.0], f["curve"]["sensitivity"]])
        ax.step(np.maximum(fp, 1.0 / 16), se, where="post",
                label="%s (n=%d lesions, %d scans, CPM %.2f)" % (g, f["lesions"], f["scans"], f["cpm"]))
    ax.set_xscale("log", base=2)
    ax.set_xlim(1.0 / 16, max(16.0, max(max(f["curve"]["fp_per_scan"] or [0]) for f in curves.values())))
    ax.set_ylim(0, 1.05)
    for r in FROC_RATES:
        ax.axvline(r, color="0.85", linewidth=0.6, zorder=0)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    n = curves.get("all", next(iter(curves.values())))
    ax.set_title("Nodule/mass FROC, shipped pipeline (n = %d lesions)" % n["lesions"], fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_confusion(metrics: dict, path: Path) -> None:
    groups = [g for g in GROUPS if g in metrics["groups"]]
    fig = _figure((3.4 * len(groups), 3.3))
    for n, g in enumerate(groups, start=1):
        v = metrics["groups"][g]["verdict"]
        cm = np.array(v["confusion_matrix"])
        ax = fig.add_subplot(1, len(groups), n)
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.max()))
        for (i, j), c in np.ndenumerate(cm):
            ax.text(j, i, str(c), ha="center", va="center",
                    color="white" if c > cm.max() / 2 else "black")
        labels = v["confusion_labels"]
        ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("verdict", fontsize=8)
        ax.set_ylabel("label", fontsize=8)
        ax.set_title("%s (n=%d, acc. %.2f)" % (g, v["n"], v["accuracy"]), fontsize=8)
    fig.tight_layout()
    _save(fig, path)


_TYPE_COLORS = {"nodule-mass": (0.8, 0.2, 0.6), INFECTION: (0.9, 0.62, 0.0)}
_LUNG_WINDOW_HU = (-1350.0, 150.0)


def plot_scan(result, record: dict, lesions: Optional[List[dict]], score_threshold: float,
              path: Path) -> None:
    """A coronal and an axial slice through the scan's largest reference lesion (else its top
    finding, else the most lung), lung outlines, the boxes of the findings at the operating
    point (nodule/mass candidates below it dotted) and the reference lesions (dashed).

    Not ``preview.lung_preview_figure``: that picture's slices are fixed by the lung zones, so
    a lesion is rarely on them; here the slices follow the lesion. Geometry goes through the
    core's :func:`preview.finding_canonical_box` / :func:`preview.ijk_to_canonical`.
    """
    from matplotlib.patches import Ellipse, Rectangle

    from ChestCTMTLLib.orientation import axial_view
    from ChestCTMTLLib.preview import finding_canonical_box, ijk_to_canonical

    vol = result.volume
    view = axial_view(vol.ijk_to_ras, vol.array.shape)
    ct = view.to_canonical(vol.array)
    lungs = view.to_canonical(result.lung_labels) if result.lung_labels is not None else None
    n_s, n_r, n_c = view.canonical_shape
    spacing = np.asarray(view.spacing, float)  # (slice, row, col) mm
    boxes = [(f,) + finding_canonical_box(view, f) for f in result.findings
             if f.score >= score_threshold or f.type == "nodule-mass"]
    refs = [(ijk_to_canonical(view, ras_to_ijk(vol, [les["center_mm"]]))[0],
             0.5 * float(les["diameter_mm"]) / spacing) for les in lesions or []]
    if refs:
        focus = max(zip(refs, lesions or []), key=lambda t: t[1]["diameter_mm"])[0][0]
    elif boxes:  # findings are best first
        focus = 0.5 * (boxes[0][1] + boxes[0][2])
    elif lungs is not None and lungs.any():
        focus = np.array([np.argmax((lungs > 0).sum(axis=(1, 2))),
                          np.argmax((lungs > 0).sum(axis=(0, 2))), n_c // 2])
    else:
        focus = np.array([n_s // 2, n_r // 2, n_c // 2])
    s, row = int(np.clip(round(focus[0]), 0, n_s - 1)), int(np.clip(round(focus[1]), 0, n_r - 1))
    fig = _figure((9.0, 4.6))
    vols = record["lung_volumes_ml"]
    fig.suptitle("%s: label %s, verdict %s; lungs R %s / L %s ml; boxes: findings with score "
                 ">= %.2f (dotted: nodule/mass below it); dashed: reference" % (record["name"], record["class"], record["verdict"],
                                                  _fmt(vols["right"], 0), _fmt(vols["left"], 0),
                                                  score_threshold), fontsize=8)
    panels = (("coronal", row, ct[::-1, row, :], None if lungs is None else lungs[::-1, row, :],
               spacing[0] / spacing[2]),
              ("axial", s, ct[s], None if lungs is None else lungs[s], spacing[1] / spacing[2]))
    for n, (kind, index, img, lab, aspect) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 2, n)
        ax.imshow(img, cmap="gray", vmin=_LUNG_WINDOW_HU[0], vmax=_LUNG_WINDOW_HU[1], aspect=aspect)
        if lab is not None:
            for v in (1, 2):
                if (lab == v).any():
                    ax.contour((lab == v).astype(np.float32), levels=[0.5], colors=["tan"],
                               linewidths=0.7)
        for f, lo, hi in boxes:
            if kind == "coronal":
                if not lo[1] <= index <= hi[1]:
                    continue
                y0, y1 = n_s - 1 - hi[0], n_s - 1 - lo[0]
            else:
                if not lo[0] <= index <= hi[0]:
                    continue
                y0, y1 = lo[1], hi[1]
            color = _TYPE_COLORS.get(f.type, (0.0, 0.6, 0.45))
            ax.add_patch(Rectangle((lo[2] - 0.5, y0 - 0.5), hi[2] - lo[2] + 1, y1 - y0 + 1,
                                   fill=False, edgecolor=color, linewidth=1.0,
                                   linestyle="-" if f.score >= score_threshold else ":"))
            ax.text(lo[2], y0 - 2, "%s %.2f" % (f.id, f.score), color=color, fontsize=6, va="bottom")
        for c, r_vox in refs:
            if kind == "coronal" and abs(c[1] - index) <= r_vox[1]:
                ax.add_patch(Ellipse((c[2], n_s - 1 - c[0]), 2 * r_vox[2], 2 * r_vox[0], fill=False,
                                     edgecolor="cyan", linewidth=0.8, linestyle="--"))
            elif kind == "axial" and abs(c[0] - index) <= r_vox[0]:
                ax.add_patch(Ellipse((c[2], c[1]), 2 * r_vox[2], 2 * r_vox[1], fill=False,
                                     edgecolor="cyan", linewidth=0.8, linestyle="--"))
        ax.set_xlim(-0.5, n_c - 0.5)
        ax.set_ylim((n_s if kind == "coronal" else n_r) - 0.5, -0.5)
        ax.set_title("%s %s %d" % (kind, "row" if kind == "coronal" else "slice", index), fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    _save(fig, path)


# --------------------------------------------------------------------------- files
def _fmt(v, digits=3):
    from .modelcard import _f

    return "" if v is None else _f(v, digits)


def write_scans_tsv(records: List[dict], path: Path) -> None:
    lines = ["\t".join(SCANS_TSV_COLUMNS)]
    for r in records:
        det = r.get("detection")
        p = r["probabilities"]
        vals = {"name": r["name"], "role": r["role"], "class": r["class"], "verdict": r["verdict"],
                "p_non-covid": p.get("non-covid"), "p_covid": p.get("covid"),
                "p_cancer": p.get("cancer"), "findings": len(r["findings"]),
                "findings_at_op": r["findings_at_op"],
                "nodule_fp_at_op": det["operating_point"]["false_positives"] if det else None,
                "lesions": len(det["lesions"]) if det else None,
                "lesions_found_at_op": (sum(les["found_at_operating_point"] for les in det["lesions"])
                                        if det else None),
                "outside_lung_at_op": r["outside_lung"]["at_op"],
                "outside_lung_all": r["outside_lung"]["all"],
                "right_lung_ml": r["lung_volumes_ml"]["right"],
                "left_lung_ml": r["lung_volumes_ml"]["left"], "seconds": r["seconds"]}
        lines.append("\t".join(_fmt(vals[c]) for c in SCANS_TSV_COLUMNS))
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_report(metrics: dict, path: Path, pictures: Sequence[str]) -> None:
    m = metrics
    L = ["# Whole-CT evaluation of %s %s" % (m["model"]["id"], m["model"]["version"]), "",
         "Manifest `%s`; %d scan(s); every scan analysed once by `Analyzer.apply` (the shipped "
         "pipeline) with score threshold 0; operating point = the model's calibrated score "
         "threshold %.3f (calibration %s); network arithmetic %s." % (
             m["manifest"], len(m["scans"]), m["model"]["score_threshold"],
             "fitted" if m["model"]["calibration_fitted"] else "defaults, not fitted",
             m.get("precision", "float32")), "",
         "| group | scans | verdict acc. | lesions | CPM | sens. @1 FP/scan | sens. @op | "
         "FP/scan @op | >= 10 mm found / ranked 1st @op | outside-lung findings/scan @op | "
         "infection slices flagged | clean slices flagged |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g, h in m["headline"].items():
        L.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            g, h["scans"], _fmt(h["verdict_accuracy"]), _fmt(h.get("lesions")), _fmt(h.get("cpm")),
            _fmt(h.get("sensitivity_at_1fp")), _fmt(h.get("op_sensitivity")),
            _fmt(h.get("op_fp_per_scan")),
            "%s / %s" % (h.get("op_ge10mm_found", ""), h.get("op_ge10mm_ranked_first", "")),
            _fmt(h["outside_lung_per_scan_at_op"]), _fmt(h.get("infection_slices_with_infection")),
            _fmt(h.get("clean_slices_with_infection"))))
    L += ["", "## Scans", "",
          "| scan | role | label | verdict | non-covid / covid / cancer | findings (all / @op) | "
          "lesions: found @op (score, rank) | outside lungs @op | lungs R / L (ml) | s |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in m["scans"]:
        p = r["probabilities"]
        det = r.get("detection")
        les = ", ".join("%.0f mm %s (%s, #%s)" % (x["diameter_mm"], "yes" if x["found_at_operating_point"]
                                                  else "no", _fmt(x["score"]), _fmt(x["rank"]))
                        for x in det["lesions"]) if det else ("none" if det is not None else "n/a")
        L.append("| %s | %s | %s | %s | %s | %d / %d | %s | %s | %s / %s | %.1f |" % (
            r["name"], r["role"], r["class"], r["verdict"],
            " / ".join(_fmt(p.get(c)) for c in CLASS_NAMES), len(r["findings"]), r["findings_at_op"],
            les or "none", _fmt(r["outside_lung"]["at_op"]), _fmt(r["lung_volumes_ml"]["right"], 0),
            _fmt(r["lung_volumes_ml"]["left"], 0), r["seconds"]))
    inf = [r for r in m["scans"] if "infection_slices" in r]
    if inf:
        L += ["", "## Per-slice infection labels (coarse)", "",
              "A slice is flagged when the covid-infection mask has a voxel on it or it lies in a "
              "covid-infection zone finding at the operating point.", "",
              "| scan | infection slices | flagged | clean slices | flagged | (mask only: infection / clean) |",
              "|---|---|---|---|---|---|"]
        for r in inf:
            s = r["infection_slices"]
            L.append("| %s | %d | %s | %d | %s | %s / %s |" % (
                r["name"], s["infection_slices"], _fmt(s["infection_slices_with_infection"]),
                s["clean_slices"], _fmt(s["clean_slices_with_infection"]),
                _fmt(s["infection_slices_with_mask"]), _fmt(s["clean_slices_with_mask"])))
    if m.get("skipped"):
        L += ["", "## Skipped", ""] + ["- %s" % s for s in m["skipped"]]
    L += [""] + ["![%s](%s)" % (p, p) for p in pictures] + [""]
    atomic_write_text(path, "\n".join(L))
