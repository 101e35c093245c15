"""What one analysis produces, independent of where it is shown (Slicer scene, files, report).

Everything is already on the input's voxel grid: the MRML adapter only copies arrays into
nodes and never resamples, which is what keeps output geometry identical to the input.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np

from .volume import CTVolume

CLASS_NAMES = ("non-covid", "covid", "cancer")
LESION_TYPES = ("covid-infection", "nodule-mass")

FINDINGS_TSV_COLUMNS = (
    "id", "type", "score", "center_r", "center_a", "center_s",
    "size_r", "size_a", "size_s", "volume_mm3",
    "lung", "zone", "diameter_mm",
    "long_axis_mm", "short_axis_mm", "mean_diameter_mm", "feret_diameter_mm", "composition",
    "solid_component_mm", "size_category",
)
#: Columns that hold text (the rest are numbers; empty where a value does not apply).
FINDINGS_TEXT_COLUMNS = ("id", "type", "lung", "zone", "composition", "size_category")


@dataclass
class Finding:
    """One lesion: a 3D object inside a lung (a nodule/mass), or one lung zone's infection.

    ``center_ras`` always lies on the lesion's own voxels inside the lung mask; ``size_ras``
    is the extent of those voxels; ``features`` holds the numbers the false-positive stage
    and the verdict looked at (report.json only).
    """

    id: str
    type: str
    score: float
    center_ras: List[float]  # mm
    size_ras: List[float]  # extent along R, A, S in mm
    ijk_min: List[int]  # inclusive (i, j, k)
    ijk_max: List[int]  # inclusive (i, j, k)
    volume_mm3: float
    lung: str = ""  # "right" | "left" | "" (no lung mask)
    zone: str = ""  # "upper" | "middle" | "lower" third of that lung
    diameter_mm: float = 0.0  # longest in-plane axis (nodules); equivalent sphere (zones)
    features: Dict[str, float] = field(default_factory=dict)
    #: nodule/mass measurements (ChestCTMTLLib.measurements); empty for zone findings
    measurements: Dict[str, object] = field(default_factory=dict)

    def row(self) -> dict:
        """One findings.tsv / report.json row, in FINDINGS_TSV_COLUMNS order."""
        c, s = self.center_ras, self.size_ras
        return {
            "id": self.id, "type": self.type, "score": round(float(self.score), 4),
            "center_r": round(float(c[0]), 2), "center_a": round(float(c[1]), 2),
            "center_s": round(float(c[2]), 2),
            "size_r": round(float(s[0]), 2), "size_a": round(float(s[1]), 2),
            "size_s": round(float(s[2]), 2),
            "volume_mm3": round(float(self.volume_mm3), 1),
            "lung": self.lung, "zone": self.zone,
            "diameter_mm": round(float(self.diameter_mm), 1),
            **self.measurement_row(),
        }

    def measurement_row(self) -> dict:
        """The measurement columns of findings.tsv ('' where a value does not apply)."""
        m = self.measurements or {}
        category = m.get("size_category") or {}
        out = {}
        for key in FINDINGS_TSV_COLUMNS[FINDINGS_TSV_COLUMNS.index("long_axis_mm"):]:
            if key == "composition":
                out[key] = m.get(key) or ""
            elif key == "size_category":
                out[key] = (category.get("category") or "") if isinstance(category, dict) \
                    else str(category)
            else:
                v = m.get(key)
                out[key] = "" if v is None else round(float(v), 1)
        return out

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelIdentity:
    id: str
    version: str
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AnalysisResult:
    """All four task outputs for one CT volume, on the input grid."""

    volume: CTVolume  # the input (never modified)
    class_probabilities: Dict[str, float]  # keys CLASS_NAMES, sum 1
    predicted_class: str
    slice_probabilities: Optional[np.ndarray]  # (n_analysed_slices, 3) or None
    analysed_slices: Optional[np.ndarray]  # k indices the model looked at
    lesion_masks: Dict[str, np.ndarray]  # lesion type -> uint8 (k, j, i); empty if seg off
    reconstruction_hu: Optional[np.ndarray]  # int16 (k, j, i); air where not analysed
    findings: List[Finding]
    model: ModelIdentity
    timings_s: Dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    precision: str = "float32"  # the network's arithmetic (options.PRECISIONS, resolved)
    slice_axis: int = 0  # numpy axis of volume.array that analysed_slices index (axial-most)
    lung_labels: Optional[np.ndarray] = None  # uint8 (k, j, i): 0, 1 right lung, 2 left lung
    lungs: dict = field(default_factory=dict)  # report.json "lungs" (volumes, method)
    verdict: dict = field(default_factory=dict)  # report.json "verdict" (evidence, calibration)
    involvement: dict = field(default_factory=dict)  # report.json "involvement" (per lung/zone)
    stage: object = None  # lesion_stage.LesionStage: canonical-grid details (not serialised)

    def report_dict(self, input_path: Optional[str] = None) -> dict:
        """The report.json structure (see README)."""
        geometry = self.volume.geometry_dict()
        return {
            # None when the classification head was switched off for this run.
            "classification": ({k: float(self.class_probabilities[k]) for k in CLASS_NAMES}
                               if self.class_probabilities else None),
            "predicted_class": self.predicted_class or None,
            "findings": [f.row() for f in self.findings],
            "model": self.model.to_dict(),
            "timings_s": {k: round(float(v), 4) for k, v in self.timings_s.items()},
            "input": {"path": input_path or self.volume.source_path, **geometry},
            "device": self.device,
            "precision": self.precision,
            "lungs": self.lungs or None,
            "verdict": self.verdict or None,
            "involvement": self.involvement or None,
            "finding_features": {f.id: {k: round(float(v), 4) for k, v in f.features.items()}
                                 for f in self.findings},
            "finding_measurements": {f.id: f.measurements for f in self.findings if f.measurements},
        }
