"""Lung involvement from what the scene holds now: the edited segmentation, and any lobes.

A radiologist corrects the lesion segmentation before signing a report, so the review's
involvement must be measured on the corrected masks, not copied from the analysis; and lobes
segmented by another extension (TotalSegmentator, MONAIAuto3DSeg "Lungs", lungmask) already in
the scene give the per-lobe percentages and the Pan et al. score. The numbers come from the
core's :func:`ChestCTMTLLib.involvement.involvement_on_input_grid`, the same functions the
analysis uses. slicer/vtk only, no Qt.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from ChestCTMTLLib.involvement import LOBES, involvement_on_input_grid, lobe_name
from ChestCTMTLLib.lungs import LEFT, RIGHT

from . import nodes

#: Lesion segments whose union is "the infection" of involvement (the model's infection type).
INFECTION_SEGMENTS = ("covid-infection",)
EDITED_SOURCE = ("HU bands inside the infection segment as it is in the scene now (edits "
                 "included; the analysis also counted nodule-shaped islands of a diffuse process)")


def lobes_in_scene(scene, volume_node, exclude=()) -> Optional[Dict[str, np.ndarray]]:
    """Lobe masks on ``volume_node``'s grid from the first segmentation node whose segment
    names (:func:`~ChestCTMTLLib.involvement.lobe_name`) give all five lobes; None if none does.

    Only complete sets count: a Pan score over fewer lobes is not Pan's score, and a partial
    set usually means another structure list (e.g. "lung" only)."""
    skip = {n.GetID() for n in exclude if n is not None}
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        if node.GetID() in skip:
            continue
        segmentation = node.GetSegmentation()
        ids = {}
        for n in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(n)
            std = lobe_name(segmentation.GetSegment(segment_id).GetName())
            if std is not None and std not in ids:
                ids[std] = segment_id
        if set(ids) == set(LOBES):
            return {std: nodes.segment_mask_array(node, ids[std], volume_node).astype(bool)
                    for std in LOBES}
    return None


def _lung_labels(results: nodes.ResultNodes) -> Optional[np.ndarray]:
    seg = results.lungs
    if seg is None:
        return None
    segmentation = seg.GetSegmentation()
    labels = None
    for n in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(n)
        name = segmentation.GetSegment(segment_id).GetName().lower()
        side = RIGHT if name.startswith("right") else LEFT if name.startswith("left") else None
        if side is None:
            continue
        mask = nodes.segment_mask_array(seg, segment_id, results.input_volume)
        if labels is None:
            labels = np.zeros(mask.shape, np.uint8)
        labels[(mask > 0) & (labels == 0)] = side
    return labels


def edited_involvement(scene, results: nodes.ResultNodes) -> Optional[dict]:
    """Involvement of the segmentation as edited (None without a lesion segmentation), with
    per-lobe numbers when the scene holds the five lobes."""
    volume = results.input_volume
    seg = results.segmentation
    if seg is None or volume is None:
        return None
    hu = nodes.ct_from_volume_node(volume).array
    lesion = np.zeros(hu.shape, bool)
    segmentation = seg.GetSegmentation()
    for n in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(n)
        if segmentation.GetSegment(segment_id).GetName() in INFECTION_SEGMENTS:
            lesion |= nodes.segment_mask_array(seg, segment_id, volume) > 0
    lobes = lobes_in_scene(scene, volume, exclude=(results.segmentation, results.lungs))
    return involvement_on_input_grid(nodes.ijk_to_ras_of(volume), hu, _lung_labels(results),
                                     lesion, lobes, source=EDITED_SOURCE)
