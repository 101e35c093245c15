"""Lung lobes from another segmenter's output, on the CT's grid (for the Pan et al. score).

ChestCTMTL does not segment lobes; the fissures need a model of their own. Users who run one
pass its output, in the form each tool writes it:

* a **folder** of one mask per structure, named as TotalSegmentator names its files
  (``lung_upper_lobe_left.nii.gz`` ...); files that are not lobes are ignored;
* a Slicer **segmentation** file (``.seg.nrrd``: segment names in the header's
  ``SegmentN_Name`` / ``SegmentN_LabelValue`` / ``SegmentN_Layer`` fields, as Slicer's
  vtkMRMLSegmentationStorageNode writes them), e.g. from MONAIAuto3DSeg or TotalSegmentator
  in Slicer;
* a **label map**: lungmask's lobe models (LTRCLobes: values 1-5, :data:`.involvement.
  LUNGMASK_LOBE_LABELS`) or TotalSegmentator's ``--ml`` multi-label file of the ``total`` task
  (v2: lung_upper_lobe_left 10, lung_lower_lobe_left 11, lung_upper_lobe_right 12,
  lung_middle_lobe_right 13, lung_lower_lobe_right 14, :data:`TOTALSEGMENTATOR_LOBE_LABELS`).
  Which convention is meant is told from the values (1-5 only vs. 10-14 among others);
  anything else is refused rather than guessed.

Masks on another grid (TotalSegmentator's 1.5 mm, a cropped file) are resampled onto the CT
with nearest neighbour; a file that does not overlap the CT is an error. SimpleITK only: this
runs inside Slicer.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np

from .errors import InputError
from .involvement import LOBES, LUNGMASK_LOBE_LABELS, lobe_name
from .volume import CTVolume

#: TotalSegmentator v2 ``total`` task: label value -> lobe (its class map, labels 10-14).
TOTALSEGMENTATOR_LOBE_LABELS = {10: "left upper lobe", 11: "left lower lobe",
                                12: "right upper lobe", 13: "right middle lobe",
                                14: "right lower lobe"}
_MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


class LobesError(InputError):
    """A lobe file that cannot be read, names no lobe, or does not lie on the CT."""

    cause = "lobes"


def _sitk():
    import SimpleITK as sitk

    return sitk


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd",) + _MASK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return path.stem


def _read(path: Path):
    sitk = _sitk()
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise LobesError("cannot read the lobe file: %s" % str(exc).strip().splitlines()[-1],
                         str(path)) from None


def _on_ct(image, reference: CTVolume) -> np.ndarray:
    """``image`` (a label image) resampled onto ``reference``'s grid, as a (k, j, i) array."""
    from .volume import itk_geometry_from_ijk_to_ras

    sitk = _sitk()
    ref = sitk.Image([int(v) for v in reference.array.shape[::-1]], sitk.sitkUInt8)
    spacing, origin, direction = itk_geometry_from_ijk_to_ras(reference.ijk_to_ras)
    ref.SetSpacing([float(v) for v in spacing])
    ref.SetOrigin([float(v) for v in origin])
    ref.SetDirection([float(v) for v in direction.ravel()])
    same = (image.GetSize() == ref.GetSize()
            and np.allclose(image.GetSpacing(), ref.GetSpacing(), atol=1e-4)
            and np.allclose(image.GetOrigin(), ref.GetOrigin(), atol=1e-3)
            and np.allclose(image.GetDirection(), ref.GetDirection(), atol=1e-4))
    if not same:
        image = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              image.GetPixelID())
    return sitk.GetArrayFromImage(image)


def _masks_from_labels(labels: np.ndarray, names: Mapping[int, str]) -> Dict[str, np.ndarray]:
    return {name: labels == value for value, name in names.items()}


def _label_convention(values: set, path: Path) -> Mapping[int, str]:
    values = values - {0}
    if values and values <= set(LUNGMASK_LOBE_LABELS):
        return LUNGMASK_LOBE_LABELS
    if values & set(TOTALSEGMENTATOR_LOBE_LABELS) and max(values) > 5:
        return TOTALSEGMENTATOR_LOBE_LABELS
    raise LobesError("a lobe label map must hold lungmask's lobe values (1-5) or TotalSegmentator's "
                     "(10-14 of the total task); this one holds %s" % sorted(values)[:12], str(path))


def _from_folder(folder: Path, reference: CTVolume) -> Dict[str, np.ndarray]:
    found: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not path.name.lower().endswith(_MASK_SUFFIXES):
            continue
        std = lobe_name(_stem(path))
        if std is None:
            continue
        if std in found:
            raise LobesError("two files for the %s: %s and %s" % (std, found[std].name, path.name),
                             str(folder))
        found[std] = path
    if not found:
        raise LobesError("no lobe mask in this folder (expected files named like TotalSegmentator's "
                         "lung_upper_lobe_right.nii.gz)", str(folder))
    return {std: _on_ct(_read(p), reference) > 0 for std, p in found.items()}


_NO_OVERLAP = "the lobe masks do not overlap the CT (another patient or frame of reference?)"
_SEGMENT_KEY = re.compile(r"^Segment(\d+)_(Name|LabelValue|Layer)$")


def _from_seg_nrrd(path: Path, reference: CTVolume) -> Dict[str, np.ndarray]:
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise LobesError("cannot read the segmentation: %s" % str(exc).strip().splitlines()[-1],
                         str(path)) from None
    segments: Dict[int, dict] = {}
    for key in reader.GetMetaDataKeys():
        m = _SEGMENT_KEY.match(key)
        if m:
            segments.setdefault(int(m.group(1)), {})[m.group(2)] = reader.GetMetaData(key)
    image = _read(path)
    components = image.GetNumberOfComponentsPerPixel()
    layers = [sitk.VectorIndexSelectionCast(image, c) for c in range(components)] \
        if components > 1 else [image]
    out: Dict[str, np.ndarray] = {}
    for index in sorted(segments):
        info = segments[index]
        std = lobe_name(info.get("Name", ""))
        if std is None:
            continue
        if std in out:
            raise LobesError("two segments for the %s" % std, str(path))
        layer = int(info.get("Layer", "0") or 0)
        value = int(info.get("LabelValue", "1") or 1)
        if layer >= len(layers):
            raise LobesError("segment %r is on layer %d of a %d-layer file"
                             % (info.get("Name"), layer, len(layers)), str(path))
        out[std] = _on_ct(layers[layer], reference) == value
    if not out:
        names = [segments[i].get("Name", "") for i in sorted(segments)]
        raise LobesError("no segment of this segmentation is a lung lobe (segments: %s)"
                         % (", ".join(names[:8]) or "none"), str(path))
    return out


def read_lobes(path, reference: CTVolume) -> Dict[str, np.ndarray]:
    """Lobe name (:data:`.involvement.LOBES`) -> bool mask on ``reference``'s (k, j, i) grid.

    Raises :class:`LobesError` (an :class:`~.errors.InputError`) with the reason when the path
    is missing, unreadable, names no lobe or does not overlap the CT.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise LobesError("no such lobe file or folder", str(path))
    if path.is_dir():
        masks = _from_folder(path, reference)
    elif path.name.lower().endswith(".seg.nrrd"):
        masks = _from_seg_nrrd(path, reference)
    else:
        image = _read(path)
        if image.GetNumberOfComponentsPerPixel() > 1:
            raise LobesError("a multi-layer label file must be a Slicer .seg.nrrd (segment names "
                             "tell which layer holds which lobe)", str(path))
        labels = _on_ct(image, reference)
        if not labels.any():
            raise LobesError(_NO_OVERLAP, str(path))
        masks = _masks_from_labels(labels, _label_convention(set(np.unique(labels).tolist()), path))
    if not any(m.any() for m in masks.values()):
        raise LobesError(_NO_OVERLAP, str(path))
    return {std: masks[std] for std in LOBES if std in masks}


def lobes_summary(masks: Optional[Mapping[str, np.ndarray]]) -> str:
    """One line for logs: which lobes were given."""
    if not masks:
        return "no lobes given"
    missing = [n for n in LOBES if n not in masks]
    return "lobes: %d of 5%s" % (len(masks), (" (missing %s)" % ", ".join(missing)) if missing else "")
