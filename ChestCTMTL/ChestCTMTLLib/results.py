"""What one analysis produces, independent of where it is shown (Slicer scene, files, report).

Everything is already on the input's voxel grid: the MRML adapter only copies arrays into
nodes and never resamples, which is what keeps output geometry identical to the input.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

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


#: label values with more than one type bit set (voxels two lesion types share)
_MULTI_BIT = np.array([bin(v).count("1") > 1 for v in range(256)], bool)


def _any_multi_bit(labels: np.ndarray, chunk: int = 32) -> bool:
    """Whether any voxel holds two types, a few slices at a time (a lookup over the whole
    array at once would make a CT-sized temporary)."""
    for k0 in range(0, labels.shape[0], chunk):
        if _MULTI_BIT[labels[k0:k0 + chunk]].any():
            return True
    return False


class LesionMasks(Mapping):
    """Lesion type -> uint8 0/1 mask (k, j, i), every type held in ONE uint8 array, one bit each.

    Why: a mask per type on the input grid costs a CT's voxel count in bytes per type (0.27 GB
    each for a 1,044-slice scan); one array of bit flags holds up to eight types in that,
    keeps voxels two types share, and is, when no voxel holds two types, already the shared
    labelmap layer Slicer stores such segments in (:meth:`shared_layer`). Reading a mask
    (``masks[name]``) builds a new 0/1 array: writing into it does not change the result.
    """

    MAX_TYPES = 8

    def __init__(self, types: Sequence[str], labels: np.ndarray) -> None:
        types = tuple(types)
        if len(types) > self.MAX_TYPES or len(set(types)) != len(types):
            raise ValueError("LesionMasks holds up to 8 distinct types, got %r" % (types,))
        if labels.dtype != np.uint8:
            raise ValueError("lesion labels must be uint8, got %s" % labels.dtype)
        self.labels = labels
        self.bits = {name: 1 << i for i, name in enumerate(types)}

    @classmethod
    def from_masks(cls, masks: "Mapping[str, np.ndarray]", shape=None) -> "LesionMasks":
        """Pack ``masks`` (type -> array, nonzero = lesion) into one array."""
        if isinstance(masks, LesionMasks):
            return masks
        arrays = list(masks.values())
        if shape is None:
            shape = arrays[0].shape if arrays else (0, 0, 0)
        labels = np.zeros(shape, np.uint8)
        packed = cls(list(masks), labels)
        for name, mask in masks.items():
            np.bitwise_or(labels, packed.bits[name], out=labels, where=np.asarray(mask) > 0)
        return packed

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.labels.shape)

    def __getitem__(self, name: str) -> np.ndarray:
        bit = self.bits[name]
        return (np.bitwise_and(self.labels, bit) != 0).view(np.uint8)

    def __iter__(self) -> Iterator[str]:
        return iter(self.bits)

    def __len__(self) -> int:
        return len(self.bits)

    def __eq__(self, other) -> bool:
        if isinstance(other, LesionMasks):
            return self.bits == other.bits and np.array_equal(self.labels, other.labels)
        if isinstance(other, Mapping):
            return set(other) == set(self) and all(
                np.array_equal(self[k], np.asarray(other[k]) > 0) for k in self)
        return NotImplemented

    __hash__ = None

    def any(self, name: str) -> bool:
        """Whether type ``name`` has any voxel (without building its mask)."""
        return bool(np.bitwise_and(self.labels, self.bits[name]).any())

    def shared_layer(self) -> Optional[Tuple[np.ndarray, Dict[str, int]]]:
        """(labels, type -> label value) when no voxel holds two types, else None: then the
        labels ARE a labelmap in which each type has its own value (its bit)."""
        if _any_multi_bit(self.labels):
            return None
        return self.labels, dict(self.bits)


@dataclass
class AnalysisResult:
    """All four task outputs for one CT volume, on the input grid."""

    volume: CTVolume  # the input (never modified)
    class_probabilities: Dict[str, float]  # keys CLASS_NAMES, sum 1
    predicted_class: str
    slice_probabilities: Optional[np.ndarray]  # (n_analysed_slices, 3) or None
    analysed_slices: Optional[np.ndarray]  # k indices the model looked at
    #: lesion type -> uint8 (k, j, i); empty if seg off. The analysis gives a LesionMasks.
    lesion_masks: "Mapping[str, np.ndarray]"
    #: int16 (k, j, i), air where not analysed (a property: see below the class)
    reconstruction_hu: Optional[np.ndarray]
    findings: List[Finding]
    model: ModelIdentity
    timings_s: Dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    precision: str = "float32"  # the network's arithmetic (options.PRECISIONS, resolved)
    runtime: str = "torch"  # what ran the network (options.RUNTIMES, resolved)
    slice_axis: int = 0  # numpy axis of volume.array that analysed_slices index (axial-most)
    lung_labels: Optional[np.ndarray] = None  # uint8 (k, j, i): 0, 1 right lung, 2 left lung
    lungs: dict = field(default_factory=dict)  # report.json "lungs" (volumes, method)
    verdict: dict = field(default_factory=dict)  # report.json "verdict" (evidence, calibration)
    involvement: dict = field(default_factory=dict)  # report.json "involvement" (per lung/zone)
    stage: object = None  # lesion_stage.LesionStage: canonical-grid details (not serialised)
    #: the network's reconstruction on its own grid (network.ModelGridReconstruction): what
    #: ``reconstruction_hu`` is built from when no array was given
    reconstruction_maps: object = None

    def reconstruction_source(self):
        """What the reconstruction is held as: the int16 array, the network's maps (with
        ``to_hu(out=...)``), or None."""
        if self._reconstruction_array is not None:
            return self._reconstruction_array
        return self.reconstruction_maps

    @property
    def has_reconstruction(self) -> bool:
        return self._reconstruction_array is not None or self.reconstruction_maps is not None

    def reconstruction_canonical_slice(self, view, k: int) -> np.ndarray:
        """Canonical axial slice ``k`` of the reconstruction (``view``: the volume's
        orientation.AxialView), without building the whole volume when it need not be."""
        if self._reconstruction_array is None and self.reconstruction_maps is not None:
            return self.reconstruction_maps.canonical_slice_hu(k)
        return view.to_canonical(self.reconstruction_hu)[k]

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
            "runtime": self.runtime,
            "lungs": self.lungs or None,
            "verdict": self.verdict or None,
            "involvement": self.involvement or None,
            "finding_features": {f.id: {k: round(float(v), 4) for k, v in f.features.items()}
                                 for f in self.findings},
            "finding_measurements": {f.id: f.measurements for f in self.findings if f.measurements},
        }


def _get_reconstruction(self) -> Optional[np.ndarray]:
    """The reconstruction in HU on the input grid. From an analysis it is built from the
    network's model-grid maps on every read (a CT-sized array: keep it while you need it,
    or use ``reconstruction_canonical_slice`` for single slices)."""
    if self._reconstruction_array is not None or self.reconstruction_maps is None:
        return self._reconstruction_array
    return self.reconstruction_maps.to_hu()


def _set_reconstruction(self, value: Optional[np.ndarray]) -> None:
    self._reconstruction_array = value
    if value is not None:
        self.reconstruction_maps = None


# a property over the dataclass field: the generated __init__ assigns through the setter
AnalysisResult._reconstruction_array = None
AnalysisResult.reconstruction_hu = property(_get_reconstruction, _set_reconstruction)
