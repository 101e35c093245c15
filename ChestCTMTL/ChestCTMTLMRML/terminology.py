"""Standard codes for our lesion segments, read from Resources/Terminology/ChestCTMTL.term.json.

Slicer identifies what a segment *is* by a terminology entry (DICOM/SNOMED-CT codes), not by
its name: that is what survives export to DICOM SEG and what Slicer's terminology selector
shows. The codes live in a standard ``.term.json`` context file (the schema Slicer and dcmqi
use), so the same file can be dropped into Slicer by hand; this module only maps our lesion
type names to that file's entries and serialises them the way vtkSlicerTerminologiesModuleLogic
does (``context~category~type~typeModifier~anatomicContext~region~regionModifier``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Tuple

from ChestCTMTLLib import paths

#: Every lesion is inside the lung; the anatomic region makes that explicit in the entry.
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_LUNG = ("SCT", "39607008", "Lung")

#: Colour for a lesion type the terminology file does not know (grey, like Slicer's default).
_FALLBACK_RGB = (128, 128, 128)


def terminology_file() -> Path:
    """The extension's terminology context file."""
    return paths.resources_dir() / "Terminology" / "ChestCTMTL.term.json"


@dataclass(frozen=True)
class LesionTerm:
    """How one lesion type is named, coloured and coded in Slicer."""

    lesion_type: str
    code_meaning: str
    color: Tuple[float, float, float]  # 0..1
    entry: Optional[str]  # serialised terminology entry; None for unknown types


def _code(item: dict) -> str:
    return "{}^{}^{}".format(item["CodingSchemeDesignator"], item["CodeValue"], item["CodeMeaning"])


@lru_cache(maxsize=4)
def _load(path: str) -> Tuple[str, Dict[str, LesionTerm]]:
    with open(path, encoding="utf-8") as handle:
        doc = json.load(handle)
    context = doc["SegmentationCategoryTypeContextName"]
    terms: Dict[str, LesionTerm] = {}
    for category in doc["SegmentationCodes"]["Category"]:
        for type_item in category.get("Type", []):
            label = type_item.get("3dSlicerLabel")
            if not label:
                continue
            rgb = type_item.get("recommendedDisplayRGBValue", _FALLBACK_RGB)
            entry = "~".join([
                context, _code(category), _code(type_item), "^^",
                _ANATOMIC_CONTEXT, "^".join(_LUNG), "^^",
            ])
            terms[label] = LesionTerm(label, type_item["CodeMeaning"],
                                      tuple(float(c) / 255.0 for c in rgb), entry)
    return context, terms


def context_name() -> str:
    return _load(str(terminology_file()))[0]


def lesion_term(lesion_type: str) -> LesionTerm:
    """The term for a lesion type; an uncoded grey term if the file does not list it."""
    terms = _load(str(terminology_file()))[1]
    if lesion_type in terms:
        return terms[lesion_type]
    return LesionTerm(lesion_type, lesion_type, tuple(c / 255.0 for c in _FALLBACK_RGB), None)


def ensure_loaded(terminologies_logic) -> None:
    """Make our context selectable in Slicer's terminology selector (idempotent)."""
    if terminologies_logic is None:
        return
    name = context_name()
    if not terminologies_logic.IsTerminologyContextLoaded(name):
        terminologies_logic.LoadTerminologyFromFile(str(terminology_file()))
