"""Writing a segmentation whose segments share one full-grid labelmap layer as ``.seg.nrrd``
without the copies Slicer's storage node makes.

Why: vtkMRMLSegmentationStorageNode::WriteBinaryLabelmapRepresentation (Slicer v5.8.0 to
v5.12.x, Libs/MRML/Core/vtkMRMLSegmentationStorageNode.cxx) allocates the common geometry
image, resamples every segment's labelmap into a new image of that geometry (one per
segment, even when segments share a layer) and appends the layers into yet another image
before writing. For the segmentations this extension writes - one shared layer already on
the CT's grid - every one of those images is a copy of the layer: about three CT-sized byte
arrays of transient memory (0.8 GB on a 1,044-slice CT) and the time to fill them.

:func:`write_segmentation` writes such a segmentation with Slicer's own NRRD writer
(vtkTeemNRRDWriter) straight from the layer, setting exactly the header fields and values the
storage node sets (the same function of Slicer's source, followed field by field: the common
geometry from ``DetermineCommonLabelmapGeometry``, the reference extent offset, the source
representation, the conversion parameters, the contained representation names, and per
segment its ID, name, colour, auto-generated flags, extent, tags, label value and layer).
A test holds the header and the voxels to the storage node's output. Any other segmentation
(several layers, a layer off the common grid, no segments) goes through the storage node.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import slicer
import vtk

from .nodes import _BINARY_LABELMAP, _numpy_matrix

#: vtkSegmentation::EXTENT_UNION_OF_EFFECTIVE_SEGMENTS_AND_REFERENCE_GEOMETRY: what the storage
#: node uses unless CropToMinimumExtent is on (it is off by default and here)
_EXTENT_WITH_REFERENCE = 1


def _extent_text(extent) -> str:
    return " ".join(str(int(v)) for v in extent)


def _segment_ids(segmentation) -> List[str]:
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentIDs(ids)
    return [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]


def _single_shared_layer(segmentation) -> Optional[Tuple[object, object, List[int]]]:
    """(the one layer, the common geometry image, its extent) when every segment's source
    labelmap is the same unsigned-char image on exactly the common geometry; else None."""
    ids = _segment_ids(segmentation)
    if not ids or segmentation.GetSourceRepresentationName() != _BINARY_LABELMAP:
        return None
    layers = {segmentation.GetSegment(i).GetRepresentation(_BINARY_LABELMAP) for i in ids}
    if len(layers) != 1:
        return None
    layer = layers.pop()
    if layer is None or layer.GetScalarType() != vtk.VTK_UNSIGNED_CHAR or \
            layer.GetNumberOfScalarComponents() != 1:
        return None
    geometry = segmentation.DetermineCommonLabelmapGeometry(_EXTENT_WITH_REFERENCE, None)
    if not geometry:
        return None
    common = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, common, False)
    extent = list(common.GetExtent())
    if list(layer.GetExtent()) != extent:
        return None
    a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    layer.GetImageToWorldMatrix(a)
    common.GetImageToWorldMatrix(b)
    if not np.allclose(_numpy_matrix(a), _numpy_matrix(b), rtol=0, atol=1e-6):
        return None
    return layer, common, extent


def write_shared_layer(segmentation_node, path: Union[str, Path],
                       compression_level: Optional[int] = None) -> bool:
    """Write ``segmentation_node`` to ``path`` (a .seg.nrrd, gzip) from its one shared layer;
    False (nothing written) when it is not such a segmentation. ``compression_level``: zlib's
    0 to 9; None keeps the writer's default, -1 = zlib's default level, as the storage node
    does (it never sets a level). Never pass -1: vtkTeemNRRDWriter's setter clamps to 0..9
    (``vtkSetClampMacro(CompressionLevel, int, 0, 9)``, Libs/vtkTeem/vtkTeemNRRDWriter.h,
    v5.8.0 to v5.12.x), and level 0 writes stored, uncompressed deflate blocks."""
    segmentation = segmentation_node.GetSegmentation()
    found = _single_shared_layer(segmentation)
    if found is None:
        return False
    layer, common, extent = found
    ids = _segment_ids(segmentation)
    tags = [_segment_tags(segmentation.GetSegment(i)) for i in ids]
    if any(t is None for t in tags):
        return False
    offset = [extent[0], extent[2], extent[4]]
    writer = slicer.vtkTeemNRRDWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(True)
    if compression_level is not None:
        writer.SetCompressionLevel(int(compression_level))
    writer.vtkSetSpaceToLPS()  # the space the storage node writes segmentations in
    writer.SetMeasurementFrameMatrix(None)
    writer.SetAttribute("Segmentation_ReferenceImageExtentOffset", _extent_text(offset))
    ras_to_ijk = vtk.vtkMatrix4x4()
    common.GetWorldToImageMatrix(ras_to_ijk)
    shift = vtk.vtkMatrix4x4()
    for axis in range(3):
        shift.SetElement(axis, 3, -offset[axis])
    ras_to_file = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(shift, ras_to_ijk, ras_to_file)
    file_to_ras = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Invert(ras_to_file, file_to_ras)
    writer.SetIJKToRASMatrix(file_to_ras)
    writer.SetAttribute("Segmentation_MasterRepresentation",
                        segmentation.GetSourceRepresentationName())
    writer.SetAttribute("Segmentation_ConversionParameters",
                        segmentation.SerializeAllConversionParameters())
    contained: List[str] = []
    segmentation.GetContainedRepresentationNames(contained)
    writer.SetAttribute("Segmentation_ContainedRepresentationNames",
                        "".join(name + "|" for name in contained))
    segment_extent = _extent_text(v - offset[i // 2] for i, v in enumerate(extent))
    for index, segment_id in enumerate(ids):
        segment = segmentation.GetSegment(segment_id)
        key = "Segment{}_".format(index)
        color = segment.GetColor()
        writer.SetAttribute(key + "ID", segment_id)
        writer.SetAttribute(key + "Name", segment.GetName())
        writer.SetAttribute(key + "Color", " ".join("%g" % c for c in color))
        writer.SetAttribute(key + "NameAutoGenerated", "1" if segment.GetNameAutoGenerated() else "0")
        writer.SetAttribute(key + "ColorAutoGenerated",
                            "1" if segment.GetColorAutoGenerated() else "0")
        writer.SetAttribute(key + "Extent", segment_extent)
        writer.SetAttribute(key + "Tags", _tags_text(tags[index]))
        writer.SetAttribute(key + "LabelValue", str(int(segment.GetLabelValue())))
        writer.SetAttribute(key + "Layer", "0")
    writer.SetInputData(layer)
    writer.Write()
    if writer.GetWriteError():
        raise OSError("could not write {}".format(path))
    return True


def _segment_tags(segment) -> Optional[Dict[str, str]]:
    """The segment's tags, or None when they cannot be read back exactly.

    vtkSegment's tag map has no Python accessor (GetTags takes a std::map); its PrintSelf
    lists every tag as ``key: value`` under "Tags:". Each parsed tag is checked against
    GetTag, so a tag that does not print unambiguously (a newline in its value) sends the
    caller to the storage node instead of into a wrong header."""
    text = str(segment)
    if "\n  Tags:\n" not in text:
        return None
    tags: Dict[str, str] = {}
    for line in text.split("\n  Tags:\n", 1)[1].splitlines():
        if not line.startswith("      ") or ": " not in line:
            break
        name, value = line[6:].split(": ", 1)
        tags[name] = value
    for name, value in tags.items():
        check = vtk.reference("")
        if not segment.GetTag(name, check) or str(check) != value:
            return None
    return tags


def _tags_text(tags: Dict[str, str]) -> str:
    """vtkMRMLSegmentationStorageNode::GetSegmentTagsAsString: ``key:value|`` in key order."""
    return "".join("{}:{}|".format(k, tags[k]) for k in sorted(tags))
