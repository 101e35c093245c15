"""A DICOM Segmentation (BINARY) of the lesions and lungs, built with highdicom.

One segment per mask (lesion types, right and left lung), coded like the terminology file
(``Resources/Terminology/ChestCTMTL.term.json``): category + type, the lungs' laterality as the
type *modifier* (Slicer's General Anatomy convention; highdicom has no argument for it, so it
is added to the built dataset), lesions with the lung as anatomic region. Frames are the source
instances themselves (one per source slice holding voxels of the segment), so every frame
carries the source image reference and the Plane Position of that instance.

Transfer syntax: Explicit VR Little Endian. BINARY pixel data is bit-packed (1 bit per voxel)
and empty frames are omitted; the only encapsulated syntax highdicom allows for BINARY is
JPEG 2000 Lossless, which dcmqi (Slicer's SEG reader) and many PACS viewers do not decode for
1-bit data, so the uncompressed syntax is what every reader accepts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .dicom_source import SourceSeries
from .results import ModelIdentity

Code3 = Tuple[str, str, str]  # (scheme designator, code value, code meaning)

MANUFACTURER = "ChestCTMTL"
SEG_SERIES_NUMBER = 9101
SEG_SERIES_DESCRIPTION = "ChestCTMTL lesions and lungs"


@dataclass
class SegmentSpec:
    """One segment: its voxels on the source grid (k, j, i) and its codes."""

    label: str
    mask: np.ndarray
    category: Code3
    type: Code3
    type_modifier: Optional[Code3] = None
    anatomic_region: Optional[Code3] = None
    color: Tuple[float, float, float] = (0.5, 0.5, 0.5)  # RGB 0..1


def coded(code: Code3):
    import highdicom as hd

    scheme, value, meaning = code
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def algorithm_identification(model: ModelIdentity):
    """The SEG's Segmentation Algorithm Identification: name, version, SHA-256 of the weights."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name=model.id, family=codes.cid7162.ArtificialIntelligence, version=model.version,
        source=MANUFACTURER, parameters={"sha256": model.sha256})


def _modifier_item(code: Code3):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator, item.CodeValue, item.CodeMeaning = code
    return item


def build_segmentation(source: SourceSeries, segments: Sequence[SegmentSpec],
                       model: ModelIdentity, software_version: str = "",
                       series_uid: Optional[str] = None, sop_uid: Optional[str] = None):
    """The highdicom Segmentation of the non-empty ``segments`` (numbered from 1 in order).

    Returns (segmentation dataset, [(segment number, label), ...]). Raises ValueError when no
    segment holds any voxel (an empty SEG is not a valid object).
    """
    import highdicom as hd
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian

    shape = source.datasets and (len(source.datasets), int(source.first.Rows),
                                 int(source.first.Columns))
    kept: List[SegmentSpec] = []
    for spec in segments:
        if tuple(spec.mask.shape) != tuple(shape):
            raise ValueError("segment {!r} has shape {} but the source series {}".format(
                spec.label, spec.mask.shape, shape))
        if spec.mask.any():
            kept.append(spec)
    if not kept:
        raise ValueError("no segment holds any voxel: nothing to write as DICOM SEG")
    descriptions = []
    for number, spec in enumerate(kept, start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=spec.label,
            segmented_property_category=coded(spec.category),
            segmented_property_type=coded(spec.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_identification(model),
            anatomic_regions=[coded(spec.anatomic_region)] if spec.anatomic_region else None,
            display_color=hd.color.CIELabColor.from_rgb(*[255.0 * c for c in spec.color])))
    pixels = np.zeros(shape + (len(kept),), dtype=bool)
    for n, spec in enumerate(kept):
        pixels[..., n] = spec.mask > 0
    seg = hd.seg.Segmentation(
        source_images=source.datasets, pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid or hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=sop_uid or hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=model.id,
        software_versions=software_version or model.version,
        device_serial_number=model.sha256[:16] or "unknown",
        series_description=SEG_SERIES_DESCRIPTION,
        content_label="LESIONS", content_description="ChestCTMTL lesion and lung segmentation",
        transfer_syntax_uid=ExplicitVRLittleEndian, omit_empty_frames=True)
    for item, spec in zip(seg.SegmentSequence, kept):
        if spec.type_modifier:
            item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = \
                DicomSequence([_modifier_item(spec.type_modifier)])
    return seg, [(n, spec.label) for n, spec in enumerate(kept, start=1)]
