"""The radiologist's review of one analysis: per-finding status and note, saved sessions, reports.

The review state lives *in the scene* (attributes of each finding's markups ROI, mirrored in the
findings table), never in the panel, so a saved .mrb carries it and any front end (Slicer
panel, script, test) sees the same thing. Qt-free: works on a headless scene too.

The report recomputes lesion and lung volumes from the segmentations as they are *now*: after
the user corrected them in the Segment Editor, the numbers follow the corrections, not the
model's output.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import vtk
from scipy import ndimage

from ChestCTMTLLib.results import CLASS_NAMES

from . import nodes, scene_involvement, terminology

STATUSES = ("accepted", "rejected", "uncertain", "unreviewed")
REPORT_FORMAT = "chestctmtl-review/1"

#: ROI colour per review status (unreviewed keeps its lesion type's colour).
STATUS_COLORS = {
    "accepted": (0.15, 0.75, 0.25),
    "rejected": (0.55, 0.55, 0.55),
    "uncertain": (1.0, 0.7, 0.0),
}

CSV_COLUMNS = ("id", "type", "score", "center_r", "center_a", "center_s", "size_r", "size_a",
               "size_s", "volume_mm3_detected", "volume_mm3_segmentation", "status", "note",
               "lung", "zone")
#: the findings table's measurement columns a report finding carries (numbers, then text)
MEASUREMENT_NUMBER_FIELDS = ("long_axis_mm", "short_axis_mm", "mean_diameter_mm",
                             "feret_diameter_mm", "solid_component_mm")
MEASUREMENT_TEXT_FIELDS = ("composition", "size_category")


class ReviewError(nodes.ChestCTMTLError):
    """A review action that cannot be done (no results, unknown status, ...); nothing changed."""

    cause = "review"


# ------------------------------------------------------------------ per-finding status
def get_finding_status(roi) -> Tuple[str, str]:
    """(status, note) of a finding ROI; a ROI never reviewed is ("unreviewed", "")."""
    status = roi.GetAttribute(nodes.STATUS_ATTR) or nodes.STATUS_UNREVIEWED
    return (status if status in STATUSES else nodes.STATUS_UNREVIEWED,
            roi.GetAttribute(nodes.NOTE_ATTR) or "")


def _status_color(roi, status: str):
    if status in STATUS_COLORS:
        return STATUS_COLORS[status]
    return terminology.lesion_term(roi.GetAttribute(nodes.TYPE_ATTR) or "").color


def _apply_color(roi, status: str) -> None:
    display = roi.GetDisplayNode()
    if display is None:
        return
    color = _status_color(roi, status)
    display.SetColor(*color)
    display.SetSelectedColor(*color)


def _apply_axes_color(results: Optional[nodes.ResultNodes], finding_id: str, status: str) -> None:
    """A finding's measurement-axis lines take its review colour too."""
    if results is None:
        return
    for axis in results.axes:
        if (axis.GetAttribute(nodes.ID_ATTR) or "") == finding_id:
            _apply_color(axis, status)


def _results_of_roi(scene, roi) -> Optional[nodes.ResultNodes]:
    for results in nodes.find_all_result_nodes(scene):
        if any(r is roi for r in results.rois):
            return results
    return None


def _table_row(table_node, finding_id: str) -> int:
    column = table_node.GetColumnIndex("id")
    if column < 0:
        return -1
    for row in range(table_node.GetNumberOfRows()):
        if table_node.GetCellText(row, column) == finding_id:
            return row
    return -1


def _write_table_review(table_node, finding_id: str, status: str, note: str) -> None:
    row = _table_row(table_node, finding_id)
    if row < 0:
        return
    for name, value in (("status", status), ("note", note)):
        column = table_node.GetColumnIndex(name)
        if column < 0:  # a table from an older scene: add the review columns
            array = vtk.vtkStringArray()
            array.SetName(name)
            array.SetNumberOfValues(table_node.GetNumberOfRows())
            for i in range(table_node.GetNumberOfRows()):
                array.SetValue(i, nodes.STATUS_UNREVIEWED if name == "status" else "")
            table_node.GetTable().AddColumn(array)
            column = table_node.GetColumnIndex(name)
        table_node.SetCellText(row, column, value)
    table_node.Modified()


def set_finding_status(roi, status: str, note: Optional[str] = None) -> None:
    """Record the reviewer's decision on one finding: ROI attributes, ROI colour, table row.

    ``note`` None keeps the current note; "" clears it.
    """
    if roi is None or not roi.IsA("vtkMRMLMarkupsROINode") or \
            roi.GetAttribute(nodes.ROLE_ATTR) != nodes.ROLE_ROI:
        raise ReviewError("not a ChestCTMTL finding ROI")
    if status not in STATUSES:
        raise ReviewError("unknown review status {!r}; use one of {}".format(status, ", ".join(STATUSES)))
    if note is None:
        note = get_finding_status(roi)[1]
    note = str(note)
    roi.SetAttribute(nodes.STATUS_ATTR, status)
    roi.SetAttribute(nodes.NOTE_ATTR, note)
    _apply_color(roi, status)
    scene = roi.GetScene()
    results = _results_of_roi(scene, roi) if scene is not None else None
    if results is not None and results.table is not None:
        _write_table_review(results.table, roi.GetAttribute(nodes.ID_ATTR) or "", status, note)
    _apply_axes_color(results, roi.GetAttribute(nodes.ID_ATTR) or "", status)
    roi.Modified()


def load_review(scene) -> Dict[str, Tuple[str, str]]:
    """After reading a saved scene: show each finding's stored status again (colour, table).

    The ROI attributes are the record (they travel in the .mrb); colours and the table's review
    columns are re-derived from them. Returns {ROI node ID: (status, note)}.
    """
    state = {}
    for results in nodes.find_all_result_nodes(scene):
        nodes.show_measurement_descriptions(results)
        for roi in results.rois:
            status, note = get_finding_status(roi)
            _apply_color(roi, status)
            _apply_axes_color(results, roi.GetAttribute(nodes.ID_ATTR) or "", status)
            if results.table is not None:
                _write_table_review(results.table, roi.GetAttribute(nodes.ID_ATTR) or "", status, note)
            state[roi.GetID()] = (status, note)
    return state


# ------------------------------------------------------------------ volumes from the segmentation
def _ijk_bounds_of_roi(roi, ras_to_ijk: np.ndarray, shape) -> Tuple[np.ndarray, np.ndarray]:
    """The voxel index box (k, j, i; inclusive) covering the ROI's world bounds."""
    b = [0.0] * 6
    roi.GetRASBounds(b)
    corners = np.array([[x, y, z, 1.0] for x in b[0:2] for y in b[2:4] for z in b[4:6]])
    ijk = (ras_to_ijk @ corners.T).T[:, :3]
    lo = np.floor(ijk.min(0) + 0.5).astype(int)  # voxel centres inside the bounds
    hi = np.ceil(ijk.max(0) - 0.5).astype(int)
    lo_kji = np.clip(lo[::-1], 0, np.array(shape) - 1)
    hi_kji = np.clip(hi[::-1], 0, np.array(shape) - 1)
    return lo_kji, hi_kji


def _segment_id(segmentation_node, lesion_type: str) -> Optional[str]:
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(lesion_type) is not None:
        return lesion_type
    segment_id = segmentation.GetSegmentIdBySegmentName(lesion_type)
    return segment_id or None


#: 26-connectivity (faces, edges and corners), scikit-image's ``label(connectivity=3)``.
_NEIGHBOURS_26 = ndimage.generate_binary_structure(3, 3)


def label_components(mask: np.ndarray) -> np.ndarray:
    """Connected components of a 3D mask, 26-connected, numbered from 1 (0: background).

    scipy.ndimage, not scikit-image: Slicer ships scipy, and this runs in the user's Slicer
    whenever a review is saved.
    """
    labelled, _count = ndimage.label(mask, structure=_NEIGHBOURS_26)
    return labelled


def lesion_volumes(results: nodes.ResultNodes) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Volumes (mm^3) from the segmentation as it is now: per lesion type, and per finding.

    A finding's volume is that of the lesion-type segment's connected components (26-connected)
    that reach into the finding's box, so a lesion the user grew beyond the box counts whole
    and one the user erased counts zero.
    """
    per_type: Dict[str, float] = {}
    per_finding: Dict[str, float] = {}
    seg = results.segmentation
    volume = results.input_volume
    if seg is None or volume is None:
        return per_type, per_finding
    ijk_to_ras = nodes.ijk_to_ras_of(volume)
    voxel_mm3 = float(abs(np.linalg.det(ijk_to_ras[:3, :3])))
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    labels_by_type = {}
    segmentation = seg.GetSegmentation()
    for n in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(n)
        name = segmentation.GetSegment(segment_id).GetName()
        mask = nodes.segment_mask_array(seg, segment_id, volume)
        per_type[name] = float(mask.sum()) * voxel_mm3
        labels_by_type[name] = (mask, None)
    for roi in results.rois:
        kind = roi.GetAttribute(nodes.TYPE_ATTR) or ""
        fid = roi.GetAttribute(nodes.ID_ATTR) or roi.GetID()
        if kind not in labels_by_type:
            per_finding[fid] = 0.0
            continue
        mask, labelled = labels_by_type[kind]
        if labelled is None:
            labelled = label_components(mask)
            labels_by_type[kind] = (mask, labelled)
        lo, hi = _ijk_bounds_of_roi(roi, ras_to_ijk, mask.shape)
        box = labelled[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]
        ids = np.unique(box[box > 0])
        per_finding[fid] = float(np.isin(labelled, ids).sum()) * voxel_mm3 if ids.size else 0.0
    return per_type, per_finding


def lung_volumes(results: nodes.ResultNodes) -> Optional[Dict[str, float]]:
    """Volume (ml) of every segment of the lung segmentation as it is now; None without one."""
    seg = results.lungs
    volume = results.input_volume
    if seg is None or volume is None:
        return None
    voxel_ml = float(abs(np.linalg.det(nodes.ijk_to_ras_of(volume)[:3, :3]))) / 1000.0
    per_lung: Dict[str, float] = {}
    segmentation = seg.GetSegmentation()
    for n in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(n)
        mask = nodes.segment_mask_array(seg, segment_id, volume)
        per_lung[segmentation.GetSegment(segment_id).GetName()] = float(mask.sum()) * voxel_ml
    return per_lung


# ------------------------------------------------------------------ summary and report
def _folder_attributes(scene, results: nodes.ResultNodes) -> dict:
    sh = scene.GetSubjectHierarchyNode()
    folder = results.folder_item

    def attr(name):
        return sh.GetItemAttribute(folder, name) or ""

    probabilities = {}
    for name in CLASS_NAMES:
        try:
            probabilities[name] = float(attr(nodes.PROBABILITY_ATTR_PREFIX + name))
        except ValueError:
            probabilities[name] = float("nan")
    return {"predicted_class": attr(nodes.PREDICTED_CLASS_ATTR), "probabilities": probabilities,
            "verdict_evidence": attr(nodes.VERDICT_EVIDENCE_ATTR),
            "model": {"id": attr(nodes.MODEL_ID_ATTR), "version": attr(nodes.MODEL_VERSION_ATTR),
                      "sha256": attr(nodes.MODEL_SHA256_ATTR)}}


def _table_rows(table_node) -> Dict[str, dict]:
    rows = {}
    if table_node is None:
        return rows
    columns = [table_node.GetColumnName(c) for c in range(table_node.GetNumberOfColumns())]
    for r in range(table_node.GetNumberOfRows()):
        row = {name: table_node.GetCellText(r, c) for c, name in enumerate(columns)}
        rows[row.get("id", str(r))] = row
    return rows


def _finding_entry(roi, row: dict) -> dict:
    center = [0.0] * 3
    roi.GetCenterWorld(center)
    size = [float(v) for v in roi.GetSize()]
    status, note = get_finding_status(roi)

    def number(key, default=float("nan")):
        try:
            return float(row.get(key, default))
        except (TypeError, ValueError):
            return default

    entry = {"roi_id": roi.GetID(), "id": roi.GetAttribute(nodes.ID_ATTR) or "",
             "type": roi.GetAttribute(nodes.TYPE_ATTR) or "",
             "score": float(roi.GetAttribute(nodes.SCORE_ATTR) or "nan"),
             "center_ras": [float(v) for v in center], "size_mm": [float(v) for v in size],
             "volume_mm3": number("volume_mm3"), "lung": row.get("lung", ""),
             "zone": row.get("zone", ""), "status": status, "note": note,
             "measurements": roi.GetAttribute(nodes.MEASUREMENTS_ATTR) or ""}
    for key in MEASUREMENT_NUMBER_FIELDS:  # None where it does not apply (zone findings)
        value = number(key)
        entry[key] = None if np.isnan(value) else value
    for key in MEASUREMENT_TEXT_FIELDS:
        entry[key] = row.get(key, "") or ""
    return entry


def results_summary(scene, volume_node) -> Optional[dict]:
    """What the panel shows for ``volume_node``: verdict, probabilities, findings with review."""
    results = nodes.find_result_nodes(scene, volume_node)
    if results is None:
        return None
    info = _folder_attributes(scene, results)
    rows = _table_rows(results.table)
    findings = [_finding_entry(roi, rows.get(roi.GetAttribute(nodes.ID_ATTR) or "", {}))
                for roi in results.rois]
    findings.sort(key=lambda f: (-f["score"], f["id"]))
    return {"predicted_class": info["predicted_class"], "probabilities": info["probabilities"],
            "verdict_evidence": info["verdict_evidence"],
            "model_id": info["model"]["id"], "model_version": info["model"]["version"],
            "model": info["model"], "findings": findings,
            "involvement": nodes.involvement_of(scene, results),
            "segmentation": results.segmentation, "lungs": results.lungs,
            "reconstruction": results.reconstruction, "results": results}


def review_report(scene, volume_node) -> dict:
    """The report as a dict (what save_review writes as JSON)."""
    summary = results_summary(scene, volume_node)
    if summary is None:
        raise ReviewError("'{}' has no ChestCTMTL results to report".format(volume_node.GetName()))
    per_type, per_finding = lesion_volumes(summary["results"])
    per_lung = lung_volumes(summary["results"])
    findings = []
    for f in summary["findings"]:
        findings.append({
            "id": f["id"], "type": f["type"], "lung": f["lung"], "zone": f["zone"],
            "score": round(f["score"], 4),
            "center_ras": [round(v, 2) for v in f["center_ras"]],
            "size_ras": [round(v, 2) for v in f["size_mm"]],
            "volume_mm3_detected": None if np.isnan(f["volume_mm3"]) else round(f["volume_mm3"], 1),
            "volume_mm3_segmentation": round(per_finding.get(f["id"], 0.0), 1)
            if summary["segmentation"] is not None else None,
            "status": f["status"], "note": f["note"],
            **{k: (None if f.get(k) is None else round(f[k], 1)) for k in MEASUREMENT_NUMBER_FIELDS},
            **{k: f.get(k, "") for k in MEASUREMENT_TEXT_FIELDS},
            "measurements": f.get("measurements", "")})
    counts = {s: sum(1 for f in findings if f["status"] == s) for s in STATUSES}
    storage = volume_node.GetStorageNode()
    return {
        "format": REPORT_FORMAT,
        "research_use_only": True,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "volume": {"name": volume_node.GetName(),
                   "source_path": storage.GetFileName() if storage is not None else None},
        "verdict": summary["predicted_class"],
        "verdict_evidence": summary.get("verdict_evidence", ""),
        "probabilities": {k: round(v, 6) for k, v in summary["probabilities"].items()},
        "lesion_volumes_mm3": {k: round(v, 1) for k, v in per_type.items()},
        "lung_volumes_ml": None if per_lung is None else {k: round(v, 1) for k, v in per_lung.items()},
        "findings": findings,
        # measured on the segmentation as it is now (the reviewer's edits), the analysis' own
        # numbers kept beside it
        "involvement": scene_involvement.edited_involvement(scene, summary["results"]),
        "involvement_analysis": summary.get("involvement"),
        "review_counts": counts,
        "model": summary["model"],
    }


def report_markdown(report: dict) -> str:
    lines = ["# ChestCTMTL review: {}".format(report["volume"]["name"]), "",
             "**Research use only - not for diagnosis.** Reviewed {}.".format(report["date"]), "",
             "## Classification", "", "Verdict: **{}**".format(report["verdict"]), ""]
    if report.get("verdict_evidence"):
        lines += ["Why: {}".format(report["verdict_evidence"]), ""]
    lines += ["| class | probability |", "|---|---|"]
    for name, p in report["probabilities"].items():
        lines.append("| {} | {:.1%} |".format(name, p))
    lines += ["", "## Lesion volumes (from the reviewed segmentation)", "",
              "| lesion type | volume (mm\u00b3) |", "|---|---|"]
    for name, v in report["lesion_volumes_mm3"].items():
        lines.append("| {} | {:.1f} |".format(name, v))
    if report.get("lung_volumes_ml") is not None:
        lines += ["", "## Lung volumes (from the reviewed lung segmentation)", "",
                  "| lung | volume (ml) |", "|---|---|"]
        for name, v in report["lung_volumes_ml"].items():
            lines.append("| {} | {:.1f} |".format(name, v))
    lines += _involvement_lines(report.get("involvement"))
    lines += ["", "## Findings", "",
              "| id | type | lung | zone | score | size R\u00d7A\u00d7S (mm) | volume detected (mm\u00b3) | "
              "volume segmentation (mm\u00b3) | status | note |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for f in report["findings"]:
        lines.append("| {} | {} | {} | {} | {:.2f} | {} | {} | {} | {} | {} |".format(
            f["id"], f["type"], f.get("lung", ""), f.get("zone", ""), f["score"],
            "\u00d7".join("{:.1f}".format(v) for v in f["size_ras"]),
            "" if f["volume_mm3_detected"] is None else "{:.1f}".format(f["volume_mm3_detected"]),
            "" if f["volume_mm3_segmentation"] is None else "{:.1f}".format(f["volume_mm3_segmentation"]),
            f["status"], f["note"].replace("|", "\\|").replace("\n", " ")))
    if not report["findings"]:
        lines.append("| - | no findings | | | | | | | | |")
    measured = [f for f in report["findings"] if f.get("long_axis_mm") is not None]
    if measured:
        lines += ["", "### Nodule measurements (from the analysis)", "",
                  "| id | long axis (mm) | short axis (mm) | mean diameter (mm) | composition | "
                  "size band |", "|---|---|---|---|---|---|"]
        for f in measured:
            lines.append("| {} | {} | {} | {} | {} | {} |".format(
                f["id"], _mm(f.get("long_axis_mm")), _mm(f.get("short_axis_mm")),
                _mm(f.get("mean_diameter_mm")), f.get("composition", ""),
                f.get("size_category", "")))
        lines += ["", "Size bands are a research aid \u2014 not a Lung-RADS assessment."]
    counts = report["review_counts"]
    lines += ["", "Review: " + ", ".join("{} {}".format(counts[s], s) for s in STATUSES), "",
              "## Model", "", "{} v{} (SHA-256 {})".format(report["model"]["id"],
                                                        report["model"]["version"],
                                                        report["model"]["sha256"]), ""]
    return "\n".join(lines)


def _mm(value) -> str:
    return "" if value is None else "{:.1f}".format(value)


def involvement_line(involvement: Optional[dict]) -> str:
    """"right 2.8 %, left 7.5 % (ground glass 141 mL, consolidation 55 mL)"; "" when the
    analysis has no involvement (no lung mask, or not computable)."""
    if not isinstance(involvement, dict) or not isinstance(involvement.get("lungs"), dict) \
            or involvement.get("reason"):
        return ""
    parts = []
    for name, short in (("right lung", "right"), ("left lung", "left")):
        lung = involvement["lungs"].get(name) or {}
        percent = lung.get("percent")
        parts.append("{} {}".format(short, "n/a" if percent is None else
                                    "{:.1f} %".format(float(percent))))
    both = involvement.get("both") or {}
    extra = []
    for key, label in (("ground_glass_ml", "ground glass"), ("consolidation_ml", "consolidation")):
        if both.get(key) is not None:
            extra.append("{} {:.0f} mL".format(label, float(both[key])))
    return ", ".join(parts) + (" ({})".format(", ".join(extra)) if extra else "")


def _involvement_lines(involvement: Optional[dict]) -> list:
    if not isinstance(involvement, dict) or not involvement:
        return []
    lines = ["", "## Lung involvement (measured on the segmentation as edited)", ""]
    if involvement.get("reason") or not isinstance(involvement.get("lungs"), dict):
        return lines + ["Not computed: {}".format(involvement.get("reason") or "unknown reason")]
    if involvement.get("method"):
        lines += ["Method: {}".format(involvement["method"]), ""]
    lines += ["| lung | volume (ml) | lesion (ml) | involved | ground glass (ml) | "
              "consolidation (ml) |", "|---|---|---|---|---|---|"]
    rows = [(name, involvement["lungs"].get(name) or {}) for name in ("right lung", "left lung")]
    rows.append(("both lungs", involvement.get("both") or {}))
    for name, v in rows:
        def ml(key):
            return "" if v.get(key) is None else "{:.1f}".format(float(v[key]))
        percent = v.get("percent")
        lines.append("| {} | {} | {} | {} | {} | {} |".format(
            name, ml("volume_ml"), ml("lesion_ml"),
            "" if percent is None else "{:.1f} %".format(float(percent)),
            ml("ground_glass_ml"), ml("consolidation_ml")))
    return lines + _lobe_lines(involvement.get("lobes"))


def _lobe_lines(lobes: Optional[dict]) -> list:
    """Per-lobe percent and Pan et al. score, when lobes were in the scene; else one line
    saying that no lobar score is claimed."""
    if not isinstance(lobes, dict) or not isinstance(lobes.get("lobes"), dict):
        return ["", "No lobe segmentation in the scene: no per-lobe involvement or CT severity "
                    "score is given."]
    lines = ["", "| lobe | volume (ml) | involved | Pan score (0-5) |", "|---|---|---|---|"]
    for name, v in lobes["lobes"].items():
        percent, score = v.get("percent"), v.get("score")
        lines.append("| {} | {} | {} | {} |".format(
            name, "" if v.get("volume_ml") is None else "{:.1f}".format(float(v["volume_ml"])),
            "" if percent is None else "{:.1f} %".format(float(percent)),
            "" if score is None else score))
    total = lobes.get("total_score")
    lines += ["", "CT severity score (Pan et al., Radiology 2020): {}".format(
        "{} / {}".format(total, lobes.get("max_score", 25)) if total is not None
        else "not given ({})".format(lobes.get("reason", "incomplete lobes")))]
    return lines


def report_csv(report: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for f in report["findings"]:
        c, s = f["center_ras"], f["size_ras"]
        writer.writerow([f["id"], f["type"], f["score"], c[0], c[1], c[2], s[0], s[1], s[2],
                         "" if f["volume_mm3_detected"] is None else f["volume_mm3_detected"],
                         "" if f["volume_mm3_segmentation"] is None else f["volume_mm3_segmentation"],
                         f["status"], f["note"], f.get("lung", ""), f.get("zone", "")])
    return out.getvalue()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, str(path))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def review_paths(out_path_mrb) -> Dict[str, Path]:
    mrb = Path(out_path_mrb)
    stem = mrb.name[:-4] if mrb.name.lower().endswith(".mrb") else mrb.name
    return {"mrb": mrb, "json": mrb.with_name(stem + "-report.json"),
            "markdown": mrb.with_name(stem + "-report.md"),
            "csv": mrb.with_name(stem + "-findings.csv")}


def save_review(scene, volume_node, out_path_mrb) -> Dict[str, Path]:
    """Write the whole session (.mrb) and the report (JSON, Markdown, CSV) next to it.

    Every file appears complete or not at all (temporary file + rename); the report is computed
    before anything is written, so a volume without results writes nothing.
    """
    paths = review_paths(out_path_mrb)
    if paths["mrb"].suffix.lower() != ".mrb":
        raise ReviewError("the session file must end in .mrb: {}".format(paths["mrb"]))
    report = review_report(scene, volume_node)
    paths["mrb"].parent.mkdir(parents=True, exist_ok=True)
    report["files"] = {k: p.name for k, p in paths.items()}
    # Written under its final name in a private sibling folder (the bundle's inner folder is
    # named after the file), then renamed into place: same file system, so the swap is atomic.
    tmp_dir = Path(tempfile.mkdtemp(prefix="." + paths["mrb"].stem + "-", dir=str(paths["mrb"].parent)))
    try:
        tmp_mrb = tmp_dir / paths["mrb"].name
        if not scene.WriteToMRB(str(tmp_mrb)) or not tmp_mrb.is_file():
            raise ReviewError("writing the scene bundle failed", str(paths["mrb"]))
        os.replace(str(tmp_mrb), str(paths["mrb"]))
    finally:
        shutil.rmtree(str(tmp_dir), ignore_errors=True)
    _atomic_write_text(paths["json"], json.dumps(report, indent=2) + "\n")
    _atomic_write_text(paths["markdown"], report_markdown(report))
    _atomic_write_text(paths["csv"], report_csv(report))
    return paths
