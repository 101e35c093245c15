"""The findings and classification tables of a result, and the attributes that carry the
verdict and the involvement with the results. Part of :mod:`.nodes` (which re-exports these
names)."""
from __future__ import annotations

import json
import logging
from typing import Dict, Iterable, List, Optional

import numpy as np
import vtk

from ChestCTMTLLib.results import CLASS_NAMES, FINDINGS_TSV_COLUMNS, AnalysisResult, Finding

from .nodes import (INVOLVEMENT_ATTR, MODEL_ID_ATTR, MODEL_SHA256_ATTR, MODEL_VERSION_ATTR,
                    PREDICTED_CLASS_ATTR, PROBABILITY_ATTR_PREFIX, STATUS_UNREVIEWED,
                    TABLE_EXTRA_COLUMNS, VERDICT_EVIDENCE_ATTR, ResultNodes, _sh,
                    _STRING_COLUMNS)

_LOG = logging.getLogger(__name__)

def _add_columns(table_node, columns: Iterable[str], rows: List[dict]) -> None:
    table = table_node.GetTable()
    for column in columns:
        array = vtk.vtkStringArray() if column in _STRING_COLUMNS or column == "class" \
            else vtk.vtkDoubleArray()
        array.SetName(column)
        for row in rows:
            value = row.get(column, "")
            if isinstance(array, vtk.vtkStringArray):
                array.InsertNextValue(str(value))
            else:  # a number; a measurement that does not apply ("") is NaN
                array.InsertNextValue(float("nan") if value in ("", None) else float(value))
        table.AddColumn(array)
    table_node.Modified()


def findings_rows(findings: Iterable[Finding]) -> List[dict]:
    """findings.tsv rows plus the review columns, as the findings table holds them."""
    rows = []
    for finding in findings:
        row = finding.row()
        row.update(status=STATUS_UNREVIEWED, note="")
        rows.append(row)
    return rows


def _build_tables(scene, result: AnalysisResult, findings: List[Finding], base: str,
                  created: list):
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", base + " findings")
    created.append(table)
    _add_columns(table, FINDINGS_TSV_COLUMNS + TABLE_EXTRA_COLUMNS, findings_rows(findings))
    classification = scene.AddNewNodeByClass("vtkMRMLTableNode", base + " classification")
    created.append(classification)
    rows = [{"class": name, "probability": float(result.class_probabilities[name])}
            for name in CLASS_NAMES]
    _add_columns(classification, ("class", "probability"), rows)
    for node in (table, classification):
        # Every supported Slicer (5.8 to 5.12) has this setter; the older
        # SetUseColumnNameAsColumnHeader is deprecated there (Libs/MRML/Core/vtkMRMLTableNode.h
        # at v5.8.0 and v5.12.3).
        node.SetUseColumnTitleAsColumnHeader(True)
        for key, value in _classification_attributes(result).items():
            node.SetAttribute(key, value)
    return table, classification


def _classification_attributes(result: AnalysisResult) -> Dict[str, str]:
    from ChestCTMTLLib.verdict import explain

    attributes = {PREDICTED_CLASS_ATTR: result.predicted_class,
                  VERDICT_EVIDENCE_ATTR: explain(result.verdict),
                  MODEL_ID_ATTR: result.model.id, MODEL_VERSION_ATTR: result.model.version,
                  MODEL_SHA256_ATTR: result.model.sha256}
    for name in CLASS_NAMES:
        attributes[PROBABILITY_ATTR_PREFIX + name] = "{:.6f}".format(
            float(result.class_probabilities[name]))
    involvement = getattr(result, "involvement", None)
    if involvement:
        attributes[INVOLVEMENT_ATTR] = json.dumps(involvement, default=_json_default)
    return attributes


def _json_default(value):
    """numpy scalars and arrays in the involvement dict -> plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError("not JSON serializable: {!r}".format(type(value).__name__))


def involvement_of(scene, results: ResultNodes) -> Optional[dict]:
    """The analysis' lung involvement stored with the results (folder, else a table), or None."""
    text = ""
    sh = _sh(scene)
    if sh is not None and results.folder_item:
        text = sh.GetItemAttribute(results.folder_item, INVOLVEMENT_ATTR) or ""
    for node in (results.table, results.classification_table):
        if not text and node is not None:
            text = node.GetAttribute(INVOLVEMENT_ATTR) or ""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        _LOG.warning("unreadable %s attribute ignored", INVOLVEMENT_ATTR)
        return None
    return value if isinstance(value, dict) else None
