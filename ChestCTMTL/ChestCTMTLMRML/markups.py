"""The findings as markups: one locked ROI per finding and, for a measured nodule, its long
and short axis as locked lines, in the finding's lesion colour, with the measurements as the
ROI's description. Part of :mod:`.nodes` (which re-exports these names)."""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import vtk

from ChestCTMTLLib.results import Finding

from . import terminology
from .nodes import (AXIS_ATTR, ID_ATTR, MEASUREMENTS_ATTR, NOTE_ATTR, ROLE_ATTR, ROLE_AXIS,
                    SCORE_ATTR, STATUS_ATTR, STATUS_UNREVIEWED, TYPE_ATTR, ResultNodes)

_LOG = logging.getLogger(__name__)

def roi_name(finding: Finding) -> str:
    return "{} {:.2f}".format(finding.type, float(finding.score))


def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number  # NaN: not measured


def measurement_text(measurements: Optional[dict]) -> str:
    """One line for a nodule's measurements, e.g. "long 18.7 mm \u00d7 short 15.1 mm, mean
    16.9 mm, part-solid, size band 4B (research aid \u2014 not a Lung-RADS assessment)";
    "" without measurements (zone findings)."""
    m = measurements or {}
    parts = []
    long_mm, short_mm = _number(m.get("long_axis_mm")), _number(m.get("short_axis_mm"))
    if long_mm is not None and short_mm is not None:
        parts.append("long {:.1f} mm \u00d7 short {:.1f} mm".format(long_mm, short_mm))
    elif long_mm is not None:
        parts.append("long {:.1f} mm".format(long_mm))
    mean_mm = _number(m.get("mean_diameter_mm"))
    if mean_mm is not None:
        parts.append("mean {:.1f} mm".format(mean_mm))
    composition = m.get("composition") or ""
    if composition:
        solid_mm = _number(m.get("solid_component_mm"))
        if composition == "part-solid" and solid_mm is not None:
            composition += " (solid {:.1f} mm)".format(solid_mm)
        parts.append(composition)
    category = m.get("size_category")
    if isinstance(category, dict) and category.get("category"):
        band = "size band {}".format(category["category"])
        if category.get("label"):
            band += " ({})".format(category["label"])
        parts.append(band)
    elif category and not isinstance(category, dict):
        parts.append("size band {}".format(category))
    return ", ".join(parts)


def _build_roi(scene, finding: Finding, created: list):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", roi_name(finding))
    created.append(node)
    node.SetCenter(*[float(v) for v in finding.center_ras])
    node.SetSize(*[float(v) for v in finding.size_ras])
    node.SetLocked(True)
    node.SetAttribute(MEASUREMENTS_ATTR, measurement_text(finding.measurements))
    node.SetAttribute(SCORE_ATTR, "{:.4f}".format(float(finding.score)))
    node.SetAttribute(TYPE_ATTR, finding.type)
    node.SetAttribute(ID_ATTR, str(finding.id))
    node.SetAttribute(STATUS_ATTR, STATUS_UNREVIEWED)
    node.SetAttribute(NOTE_ATTR, "")
    _show_locked_in_lesion_colour(node, finding.type)
    return node


def _show_locked_in_lesion_colour(node, lesion_type: str) -> None:
    """A markups node drawn in its lesion type's colour, without interaction handles."""
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        color = terminology.lesion_term(lesion_type).color
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        if hasattr(display, "SetHandlesInteractive"):
            display.SetHandlesInteractive(False)


def show_measurement_descriptions(results: ResultNodes) -> None:
    """Put each finding ROI's measurements (its MEASUREMENTS_ATTR) into its description.

    Markups nodes rewrite their description from their own (here: no) enabled measurements
    whenever those are updated, e.g. while a scene is built or read, so the attribute is the
    record and this is called again after building and after loading a scene.
    """
    for roi in results.rois:
        text = roi.GetAttribute(MEASUREMENTS_ATTR) or ""
        if text and roi.GetDescription() != text:
            roi.SetDescription(text)


def axis_name(finding: Finding, which: str) -> str:
    return "{} {} axis".format(finding.id, which)


def _axis_points(finding: Finding, which: str) -> Optional[np.ndarray]:
    points = (finding.measurements or {}).get(which + "_axis_ras")
    if not points:
        return None
    array = np.asarray(points, dtype=np.float64)
    if array.shape != (2, 3) or not np.all(np.isfinite(array)):
        _LOG.warning("finding %s: %s axis end points %r ignored", finding.id, which, points)
        return None
    return array


def _build_axes(scene, finding: Finding, created: list) -> list:
    """A locked markups line per measured axis ("long", "short") of a nodule finding; the
    control points are the axis' end points in RAS (the input volume's world)."""
    lines = []
    for which in ("long", "short"):
        points = _axis_points(finding, which)
        if points is None:
            continue
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", axis_name(finding, which))
        created.append(node)
        node.SetAttribute(ROLE_ATTR, ROLE_AXIS)
        node.SetAttribute(ID_ATTR, str(finding.id))
        node.SetAttribute(TYPE_ATTR, finding.type)
        node.SetAttribute(AXIS_ATTR, which)
        for point in points:
            node.AddControlPoint(vtk.vtkVector3d(*[float(v) for v in point]))
        node.SetLocked(True)
        _show_locked_in_lesion_colour(node, finding.type)
        lines.append(node)
    return lines
