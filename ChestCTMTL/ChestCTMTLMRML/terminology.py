"""Standard codes for our lesion and lung segments, from Resources/Terminology/ChestCTMTL.term.json.

Slicer identifies what a segment *is* by a terminology entry (DICOM/SNOMED-CT codes), not by
its name: that is what survives export to DICOM SEG and what Slicer's terminology selector
shows. The codes live in a standard ``.term.json`` context file (the schema Slicer and dcmqi
use), so the same file can be dropped into Slicer by hand; this module only maps our segment
names to that file's entries and serialises them the way vtkSlicerTerminologiesModuleLogic
does (``context~category~type~typeModifier~anatomicContext~region~regionModifier``).

Lesions are types with the lung as anatomic region. The lungs are coded as Slicer codes anatomy
(Slicer/Slicer ``Modules/Loadable/Terminologies/Resources/
SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json``, v5.8.0 to v5.12): category
"Anatomical Structure" (SCT 123037004), type "Lung" (SCT 39607008) with the laterality in the
*type modifier* (Right SCT 24028007 / Left SCT 7771000), no anatomic region, and Slicer's
colour (197, 165, 145), which that file gives to both lungs.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Tuple

from ChestCTMTLLib import paths
from ChestCTMTLLib.lungs import LUNG_NAMES

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
    """How one segment (a lesion type or a lung) is named, coloured and coded in Slicer."""

    lesion_type: str  # the segment name ("nodule-mass", "right lung", ...)
    code_meaning: str
    color: Tuple[float, float, float]  # 0..1
    entry: Optional[str]  # serialised terminology entry; None for unknown names

    @property
    def name(self) -> str:
        return self.lesion_type


def _code(item: dict) -> str:
    return "{}^{}^{}".format(item["CodingSchemeDesignator"], item["CodeValue"], item["CodeMeaning"])


def _color(item: dict) -> Tuple[float, float, float]:
    return tuple(float(c) / 255.0 for c in item.get("recommendedDisplayRGBValue", _FALLBACK_RGB))


@lru_cache(maxsize=4)
def _load(path: str) -> Tuple[str, Dict[str, LesionTerm], Dict[str, LesionTerm]]:
    """(context name, lesion terms, anatomy terms), each keyed by its ``3dSlicerLabel``.

    A labelled type is a lesion (anatomic region: lung); a labelled type *modifier* is an
    anatomical structure whose laterality is the modifier (Slicer's right/left lung), with
    the region left empty as in Slicer's General Anatomy entries.
    """
    with open(path, encoding="utf-8") as handle:
        doc = json.load(handle)
    context = doc["SegmentationCategoryTypeContextName"]
    lesions: Dict[str, LesionTerm] = {}
    anatomy: Dict[str, LesionTerm] = {}
    for category in doc["SegmentationCodes"]["Category"]:
        for type_item in category.get("Type", []):
            label = type_item.get("3dSlicerLabel")
            if label:
                entry = "~".join([
                    context, _code(category), _code(type_item), "^^",
                    _ANATOMIC_CONTEXT, "^".join(_LUNG), "^^",
                ])
                lesions[label] = LesionTerm(label, type_item["CodeMeaning"], _color(type_item),
                                            entry)
            for modifier in type_item.get("Modifier", []):
                label = modifier.get("3dSlicerLabel")
                if not label:
                    continue
                entry = "~".join([
                    context, _code(category), _code(type_item), _code(modifier),
                    _ANATOMIC_CONTEXT, "^^", "^^",
                ])
                meaning = "{} {}".format(modifier["CodeMeaning"], type_item["CodeMeaning"].lower())
                anatomy[label] = LesionTerm(label, meaning, _color(modifier), entry)
    return context, lesions, anatomy


def context_name() -> str:
    return _load(str(terminology_file()))[0]


def lesion_term(lesion_type: str) -> LesionTerm:
    """The term for a lesion type; an uncoded grey term if the file does not list it."""
    terms = _load(str(terminology_file()))[1]
    if lesion_type in terms:
        return terms[lesion_type]
    return LesionTerm(lesion_type, lesion_type, tuple(c / 255.0 for c in _FALLBACK_RGB), None)


def lung_term(label) -> LesionTerm:
    """The term of one lung: ``label`` is a ``ChestCTMTLLib.lungs`` label value (1 right,
    2 left) or its name ("right lung", "left lung")."""
    name = LUNG_NAMES.get(int(label), label) if isinstance(label, numbers.Integral) else str(label)
    terms = _load(str(terminology_file()))[2]
    if name not in terms:
        raise KeyError("no lung called {!r} in {}".format(label, terminology_file().name))
    return terms[name]


def is_loaded(terminologies_logic) -> bool:
    """Whether our context is among the logic's loaded terminologies.

    Uses ``GetLoadedTerminologyNames(vtkStringArray*)``, which every supported Slicer has
    (Modules/Loadable/Terminologies/Logic/vtkSlicerTerminologiesModuleLogic.h, v5.8.0 to
    v5.12.3); ``IsTerminologyContextLoaded`` exists only from v5.10.0.
    """
    import vtk

    names = vtk.vtkStringArray()
    terminologies_logic.GetLoadedTerminologyNames(names)
    return context_name() in {names.GetValue(i) for i in range(names.GetNumberOfValues())}


def ensure_loaded(terminologies_logic) -> None:
    """Make our context selectable in Slicer's terminology selector (idempotent)."""
    if terminologies_logic is None:
        return
    if not is_loaded(terminologies_logic):
        terminologies_logic.LoadTerminologyFromFile(str(terminology_file()))
