"""Analysis results -> MRML nodes, and MRML volume nodes <-> core CT volumes.

One function builds what a radiologist reviews (lesion segmentation, lung segmentation,
reconstruction, one ROI per finding, a line per measured nodule axis, findings and
classification tables, all in one
subject-hierarchy folder per input volume), so the
Slicer module, the batch script and the ``chestctmtl`` command show and save the same thing.

Design choices that matter to callers:

* Result arrays are already on the input's voxel grid, so every node copies the input volume's
  own IJK-to-RAS matrix and never resamples; geometry is identical by construction.
* Result nodes point back at their input with a node reference (not a name or an ID string),
  because Slicer remaps references when a scene is imported or a .mrb reopened.
* Building is all-or-nothing: a failure removes everything built so far, and previous results
  are removed (``replace=True``) only after the new ones exist.
* Segments get their voxels from an image built here rather than through ``slicer.util``'s
  helpers, which go through temporary nodes in the *global* scene; that would leak nodes into
  ``slicer.mrmlScene`` while building in another (scratch) scene.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ChestCTMTLLib.errors import ChestCTMTLError, InputError
from ChestCTMTLLib.lungs import LUNG_NAMES
from ChestCTMTLLib.results import FINDINGS_TEXT_COLUMNS, AnalysisResult, LesionMasks
from ChestCTMTLLib.volume import CTVolume

from . import terminology

_LOG = logging.getLogger(__name__)

# ------------------------------------------------------------------ names shared with the module
FOLDER_PREFIX = "ChestCTMTL \u2013 "  # "ChestCTMTL – <volume name>"
ROLE_ATTR = "ChestCTMTL.role"
ROLE_FOLDER = "results"
ROLE_SEGMENTATION = "segmentation"
ROLE_LUNGS = "lungs"
ROLE_RECONSTRUCTION = "reconstruction"
ROLE_ROI = "finding"
ROLE_AXIS = "measurement-axis"  # a nodule's long or short axis (markups line)
ROLE_TABLE = "findings-table"
ROLE_CLASSIFICATION_TABLE = "classification-table"
INPUT_VOLUME_ID_ATTR = "ChestCTMTL.inputVolumeID"  # on the folder item (fallback lookup)
INPUT_REFERENCE_ROLE = "chestctmtlInputVolume"  # node reference from every result node

SCORE_ATTR = "ChestCTMTL.score"
TYPE_ATTR = "ChestCTMTL.type"
ID_ATTR = "ChestCTMTL.id"
STATUS_ATTR = "ChestCTMTL.status"
NOTE_ATTR = "ChestCTMTL.note"
STATUS_UNREVIEWED = "unreviewed"
#: a nodule ROI's measurements as one line (measurement_text); also its description
MEASUREMENTS_ATTR = "ChestCTMTL.measurements"
AXIS_ATTR = "ChestCTMTL.axis"  # "long" | "short" on a measurement-axis line
#: the analysis' lung involvement (JSON of AnalysisResult.involvement), on folder and tables
INVOLVEMENT_ATTR = "ChestCTMTL.involvement"

PREDICTED_CLASS_ATTR = "ChestCTMTL.predictedClass"
VERDICT_EVIDENCE_ATTR = "ChestCTMTL.verdictEvidence"  # verdict.explain(): what moved the verdict
PROBABILITY_ATTR_PREFIX = "ChestCTMTL.probability."
MODEL_ID_ATTR = "ChestCTMTL.modelID"
MODEL_VERSION_ATTR = "ChestCTMTL.modelVersion"
MODEL_SHA256_ATTR = "ChestCTMTL.modelSHA256"

TABLE_EXTRA_COLUMNS = ("status", "note")
_STRING_COLUMNS = FINDINGS_TEXT_COLUMNS + ("status", "note")

#: Slicer's "CT-Lung" display preset (Volumes module), as window, level in HU.
CT_LUNG_WINDOW_LEVEL = (1400.0, -500.0)

_BINARY_LABELMAP = "Binary labelmap"


class ResultsExistError(ChestCTMTLError):
    """The volume already has results and the caller did not ask to replace them."""

    cause = "results-exist"


class GeometryMismatchError(ChestCTMTLError):
    """The result's voxel grid is not the volume node's grid: it belongs to another volume."""

    cause = "geometry-mismatch"


@dataclass
class ResultOptions:
    """Which results to create (the module panel's check boxes) and how to show them.

    ``segmentation`` switches off every segmentation node (lesions and lungs); ``lungs``
    only the lung segmentation (which exists only when the result has ``lung_labels``);
    ``measurements`` the long/short axis lines of nodule findings (shown findings only).
    """

    segmentation: bool = True
    lungs: bool = True
    reconstruction: bool = True
    detections: bool = True
    score_threshold: float = 0.0
    show_3d: bool = False
    measurements: bool = True
    #: the reconstruction node uses the result's array instead of a copy (for nodes that only
    #: live to be written, e.g. a case folder's scratch scene: a full volume less in memory)
    share_arrays: bool = False


@dataclass
class ResultNodes:
    """Everything created for one input volume; ``None``/empty for results switched off."""

    folder_item: int
    input_volume: object
    segmentation: object = None  # lesions
    lungs: object = None  # lung segmentation: segments "right lung", "left lung"
    reconstruction: object = None
    rois: List[object] = field(default_factory=list)
    axes: List[object] = field(default_factory=list)  # long/short axis lines of nodules
    table: object = None  # findings (+ status, note)
    classification_table: object = None

    def data_nodes(self) -> list:
        nodes = [self.segmentation, self.lungs, self.reconstruction, *self.rois, *self.axes,
                 self.table, self.classification_table]
        return [n for n in nodes if n is not None]


# ------------------------------------------------------------------ matrices and arrays
def _vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras_of(volume_node) -> np.ndarray:
    """The node's own IJK-to-RAS (parent transforms are applied by placing results under them)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return _numpy_matrix(matrix)


def volume_shape_of(volume_node) -> tuple:
    """(k, j, i) of the node's voxel array."""
    image = volume_node.GetImageData()
    if image is None:
        return ()
    i, j, k = image.GetDimensions()
    return (k, j, i)


def _add_ct_display(scene, volume_node) -> None:
    """A grey display node with the CT lung window, set directly: CreateDefaultDisplayNodes
    would first compute an automatic window from a histogram (~0.7 s for a 512x512x261 CT)."""
    display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    display.AutoWindowLevelOff()
    display.SetWindowLevel(*CT_LUNG_WINDOW_LEVEL)
    if scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is not None:
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    volume_node.SetAndObserveDisplayNodeID(display.GetID())


def _set_voxels(node, array: np.ndarray, share: bool) -> None:
    """The node's image: a copy of ``array`` (Slicer's updateVolumeFromArray), or with ``share``
    the array's own memory (zero-copy; VTK keeps a reference to it), for a node that is only
    read, e.g. to be written to a file."""
    if not share or not array.flags.c_contiguous:
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
        return
    k, j, i = array.shape
    image = vtk.vtkImageData()
    image.SetDimensions(int(i), int(j), int(k))
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.reshape(-1), deep=False))
    node.SetAndObserveImageData(image)


def volume_node_from_ct(scene, ct: CTVolume, name: Optional[str] = None, share: bool = False):
    """A new scalar volume node holding a copy of ``ct`` (with ``share``: ``ct.array`` itself,
    never to be edited) with its exact geometry."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or ct.name or "volume")
    try:
        node.SetIJKToRASMatrix(_vtk_matrix(ct.ijk_to_ras))
        _set_voxels(node, ct.array, share)
        _add_ct_display(scene, node)
    except Exception:
        _remove_node(scene, node)
        raise
    return node


def ct_from_volume_node(volume_node) -> CTVolume:
    """A CTVolume with a *copy* of the node's voxels, so analysis can never alter the node."""
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError("the input must be a scalar volume node")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError("the input is a label map, not a CT volume")
    image = volume_node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError("volume node '{}' has no voxel data".format(volume_node.GetName()))
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    source_path = None
    storage = volume_node.GetStorageNode()
    if storage is not None and storage.GetFileName():
        source_path = storage.GetFileName()
    return CTVolume(array=array, ijk_to_ras=ijk_to_ras_of(volume_node), name=volume_node.GetName(),
                    source_path=source_path, metadata={"mrml_node_id": volume_node.GetID()})


def _oriented_image(shape, ijk_to_ras: np.ndarray, memory: Optional[np.ndarray] = None):
    """An unsigned-char vtkOrientedImageData on the given grid and its voxels as (k, j, i);
    with ``memory`` (a C-contiguous uint8 array of ``shape``) the image uses that array's memory
    and the voxels returned are that array."""
    k, j, i = shape
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(int(i), int(j), int(k))
    if memory is not None:
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(memory.reshape(-1), deep=False))
        voxels = memory
    else:
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i)
    image.SetImageToWorldMatrix(_vtk_matrix(ijk_to_ras))
    return image, voxels


def _oriented_mask(mask: np.ndarray, ijk_to_ras: np.ndarray):
    """A 0/1 vtkOrientedImageData on the given grid (what a segment stores)."""
    image, voxels = _oriented_image(mask.shape, ijk_to_ras)
    voxels[:] = np.asarray(mask) != 0
    return image


def segment_mask_array(segmentation_node, segment_id: str, reference_volume_node) -> np.ndarray:
    """A segment as uint8 0/1 (k, j, i) on the reference volume's grid, with no temporary nodes.

    Used to recompute lesion volumes after the user edited the segmentation. Segments loaded
    from a .seg.nrrd share labelmap layers, told apart by their label value.
    """
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise KeyError("no segment '{}' in {}".format(segment_id, segmentation_node.GetName()))
    shape = volume_shape_of(reference_volume_node)
    labelmap = segment.GetRepresentation(_BINARY_LABELMAP)
    if labelmap is None or labelmap.IsEmpty():
        return np.zeros(shape, np.uint8)
    reference = slicer.vtkOrientedImageData()
    reference.SetDimensions(shape[2], shape[1], shape[0])
    reference.SetImageToWorldMatrix(_vtk_matrix(ijk_to_ras_of(reference_volume_node)))
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, reference, resampled, False, True)
    voxels = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(shape)
    label = segment.GetLabelValue() if hasattr(segment, "GetLabelValue") else 1
    return (voxels == label).astype(np.uint8)


# ------------------------------------------------------------------ subject hierarchy helpers
def _sh(scene):
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def _put_in_folder(sh, node, folder_item: int) -> None:
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, folder_item)
    else:
        sh.CreateItem(folder_item, node)


def _folder_parent(sh, volume_node) -> int:
    """The volume's study if it is in one (DICOM import), else the scene (top level)."""
    item = sh.GetItemByDataNode(volume_node)
    if item:
        parent = sh.GetItemParent(item)
        study = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
        if parent and parent != sh.GetSceneItemID() and sh.GetItemLevel(parent) == study:
            return parent
    return sh.GetSceneItemID()


def _remove_node(scene, node) -> None:
    """Remove a data node with its display and storage nodes (RemoveNode leaves those behind)."""
    if node is None or node.GetScene() is None:
        return
    dependents = []
    if node.IsA("vtkMRMLDisplayableNode"):
        dependents += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        dependents += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    if node.IsA("vtkMRMLSegmentationNode"):
        # Segments sharing a layer are "separated" into new full-volume images one by one as
        # the segmentation is destroyed (vtkSegmentation::RemoveSegment ->
        # SeparateSegmentLabelmap, Slicer v5.8.0 to v5.12.x): two CT-sized copies made only
        # to be thrown away. Without representations there is nothing to separate.
        segmentation = node.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segmentation.GetNthSegment(index).RemoveAllRepresentations()
    sh = _sh(scene)
    item = sh.GetItemByDataNode(node) if sh is not None else 0
    if item:  # first the item, so it cannot linger in its folder
        sh.RemoveItem(item, False, False)
    scene.RemoveNode(node)
    for dependent in dependents:
        if dependent is not None and dependent.GetScene() is not None:
            scene.RemoveNode(dependent)


def remove_result_nodes(scene, results: ResultNodes) -> None:
    """Delete one volume's results (nodes and folder); nothing else is touched."""
    for node in results.data_nodes():
        _remove_node(scene, node)
    sh = _sh(scene)
    if sh is not None and results.folder_item and sh.GetItemName(results.folder_item) is not None:
        # Only an empty folder remains unless a user put own nodes into it; keep those.
        children = vtk.vtkIdList()
        sh.GetItemChildren(results.folder_item, children, False)
        if children.GetNumberOfIds() == 0:
            sh.RemoveItem(results.folder_item, False, False)


def _is_result_folder(sh, item: int) -> bool:
    return sh.GetItemAttribute(item, ROLE_ATTR) == ROLE_FOLDER


def _result_folders(sh) -> List[int]:
    items = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), items, True)
    return [items.GetId(n) for n in range(items.GetNumberOfIds())
            if _is_result_folder(sh, items.GetId(n))]


def _collect(sh, folder: int, volume_node) -> ResultNodes:
    results = ResultNodes(folder_item=folder, input_volume=volume_node)
    children = vtk.vtkIdList()
    sh.GetItemChildren(folder, children, False)
    for n in range(children.GetNumberOfIds()):
        node = sh.GetItemDataNode(children.GetId(n))
        role = node.GetAttribute(ROLE_ATTR) if node is not None else None
        if role == ROLE_SEGMENTATION:
            results.segmentation = node
        elif role == ROLE_LUNGS:
            results.lungs = node
        elif role == ROLE_RECONSTRUCTION:
            results.reconstruction = node
        elif role == ROLE_ROI:
            results.rois.append(node)
        elif role == ROLE_AXIS:
            results.axes.append(node)
        elif role == ROLE_TABLE:
            results.table = node
        elif role == ROLE_CLASSIFICATION_TABLE:
            results.classification_table = node
    return results


def _folder_input_volume(sh, folder: int):
    """The input volume a results folder belongs to (via node references, else the ID attribute)."""
    children = vtk.vtkIdList()
    sh.GetItemChildren(folder, children, False)
    for n in range(children.GetNumberOfIds()):
        node = sh.GetItemDataNode(children.GetId(n))
        if node is not None and node.GetAttribute(ROLE_ATTR):
            referenced = node.GetNodeReference(INPUT_REFERENCE_ROLE)
            if referenced is not None:
                return referenced
    volume_id = sh.GetItemAttribute(folder, INPUT_VOLUME_ID_ATTR)
    scene = sh.GetScene()
    return scene.GetNodeByID(volume_id) if (volume_id and scene is not None) else None


def find_result_nodes(scene, volume_node) -> Optional[ResultNodes]:
    """This volume's results in the scene, or None."""
    sh = _sh(scene)
    if sh is None or volume_node is None:
        return None
    for folder in _result_folders(sh):
        if _folder_input_volume(sh, folder) is volume_node:
            return _collect(sh, folder, volume_node)
    return None


def find_all_result_nodes(scene) -> List[ResultNodes]:
    """Results of every analysed volume in the scene (e.g. after loading a .mrb)."""
    sh = _sh(scene)
    if sh is None:
        return []
    found = []
    for folder in _result_folders(sh):
        volume = _folder_input_volume(sh, folder)
        found.append(_collect(sh, folder, volume))
    return found


# ------------------------------------------------------------------ node builders
def _tag(node, role: str, volume_node) -> None:
    node.SetAttribute(ROLE_ATTR, role)
    node.SetNodeReferenceID(INPUT_REFERENCE_ROLE, volume_node.GetID())
    transform_id = volume_node.GetTransformNodeID()
    if transform_id and node.IsA("vtkMRMLTransformableNode"):
        node.SetAndObserveTransformNodeID(transform_id)


def _set_segment_terminology(segment, entry: str) -> None:
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(entry)
    else:  # Slicer < 5.9
        segment.SetTag(segment.GetTerminologyEntryTagName(), entry)


def _new_segmentation_node(scene, volume_node, name: str, created: list):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    created.append(node)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segmentation = node.GetSegmentation()
    if hasattr(segmentation, "SetSourceRepresentationName"):
        segmentation.SetSourceRepresentationName(_BINARY_LABELMAP)
    else:  # Slicer < 5.4
        segmentation.SetMasterRepresentationName(_BINARY_LABELMAP)
    return node


def _new_segment(name: str, term: terminology.LesionTerm):
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetColor(*term.color)
    if term.entry:
        _set_segment_terminology(segment, term.entry)
    return segment


def _build_segmentation(scene, volume_node, masks: Dict[str, np.ndarray], name: str,
                        show_3d: bool, created: list, share: bool = False):
    shape = volume_shape_of(volume_node)
    # checked before any node exists (a LesionMasks' masks share one shape: read it, not them)
    shapes = {name: masks.shape for name in masks} if isinstance(masks, LesionMasks) else \
        {name: np.shape(mask) for name, mask in masks.items()}
    for lesion_type, mask_shape in shapes.items():
        if tuple(mask_shape) != tuple(shape):
            raise GeometryMismatchError(
                "lesion mask '{}' has shape {}, the volume {}".format(lesion_type, mask_shape, shape))
    node = _new_segmentation_node(scene, volume_node, name, created)
    segmentation = node.GetSegmentation()
    ijk_to_ras = ijk_to_ras_of(volume_node)
    shared, values = _shared_layer(masks, shape, ijk_to_ras, share)
    for lesion_type in masks:
        segment = _new_segment(lesion_type, terminology.lesion_term(lesion_type))
        if shared is not None:
            segment.AddRepresentation(_BINARY_LABELMAP, shared)
            segment.SetLabelValue(int(values[lesion_type]))
        else:
            segment.AddRepresentation(_BINARY_LABELMAP,
                                      _oriented_mask(masks[lesion_type], ijk_to_ras))
        segmentation.AddSegment(segment, lesion_type)
    display = node.GetDisplayNode()
    display.SetVisibility2DFill(True)
    display.SetVisibility2DOutline(True)
    display.SetVisibility3D(bool(show_3d))
    if show_3d:
        node.CreateClosedSurfaceRepresentation()
    return node


def _shared_layer(masks, shape, ijk_to_ras, share: bool = False):
    """(one labelmap holding every lesion type, type -> its label value) when no two types
    share a voxel, else (None, None): one layer each. A shared layer is how Slicer itself
    stores segments that do not overlap: one full-volume image instead of one per type, and
    writing the ``.seg.nrrd`` needs no merging (measured: the first write 0.84 -> 0.3 s on a
    512 x 512 x 261 CT). The analysis' :class:`LesionMasks` already is such a labelmap (its
    bits are the values): it is copied once, or with ``share`` used in place."""
    if len(masks) < 2:
        return None, None
    if isinstance(masks, LesionMasks):
        layer = masks.shared_layer()
        if layer is None:
            return None, None
        labels, values = layer
        if share and labels.flags.c_contiguous:
            image, _ = _oriented_image(shape, ijk_to_ras, labels)
        else:
            image, voxels = _oriented_image(shape, ijk_to_ras)
            voxels[:] = labels
        return image, values
    image, voxels = _oriented_image(shape, ijk_to_ras)
    voxels[:] = 0  # AllocateScalars leaves the memory as it was
    values = {}
    for value, (name, mask) in enumerate(masks.items(), start=1):
        on = np.asarray(mask) > 0
        if np.any(voxels[on]):
            return None, None  # two types share voxels: separate layers keep both
        voxels[on] = value
        values[name] = value
    return image, values


def _build_lungs(scene, volume_node, lung_labels: np.ndarray, name: str, created: list,
                 share: bool = False):
    """The lung segmentation: segments "right lung" and "left lung" (always both, so a lung
    the core missed can be painted in), terminology-coded as Slicer codes anatomy.

    Both segments share ONE labelmap layer, told apart by their label value (1 right, 2 left:
    the core's own label values), which is how Slicer itself stores a segmentation whose
    segments do not overlap: half the memory of one full-volume image per lung, and the
    ``.seg.nrrd`` needs no merging. Shown as outlines only, so the lesion overlay stays visible.
    """
    shape = volume_shape_of(volume_node)
    if tuple(lung_labels.shape) != tuple(shape):
        raise GeometryMismatchError("lung labels have shape {}, the volume {}".format(
            lung_labels.shape, shape))
    node = _new_segmentation_node(scene, volume_node, name, created)
    segmentation = node.GetSegmentation()
    labels = np.asarray(lung_labels)
    if share and labels.dtype == np.uint8 and labels.flags.c_contiguous and \
            int(labels.max(initial=0)) <= max(LUNG_NAMES):
        image, voxels = _oriented_image(shape, ijk_to_ras_of(volume_node), labels)
    else:
        image, voxels = _oriented_image(shape, ijk_to_ras_of(volume_node))
    if voxels is labels:
        pass  # the labels' own memory, already 0 / 1 right / 2 left
    elif labels.dtype == np.uint8:  # a lookup table: ~8x faster than np.isin on a whole CT
        keep = np.zeros(256, np.uint8)
        keep[list(LUNG_NAMES)] = list(LUNG_NAMES)
        voxels[:] = keep[labels]
    else:
        voxels[:] = np.where(np.isin(labels, list(LUNG_NAMES)), labels, 0)
    for value, lung_name in sorted(LUNG_NAMES.items()):
        segment = _new_segment(lung_name, terminology.lung_term(value))
        segment.AddRepresentation(_BINARY_LABELMAP, image)
        segment.SetLabelValue(int(value))
        segmentation.AddSegment(segment, lung_name)
    display = node.GetDisplayNode()
    display.SetVisibility2DFill(False)
    display.SetVisibility2DOutline(True)
    display.SetVisibility3D(False)
    return node


def _build_reconstruction(scene, volume_node, reconstruction, name: str,
                          created: list, share: bool = False):
    """The reconstruction volume from an int16 array (copied, or with ``share`` used in place)
    or from the network's maps (``to_hu(out=...)``), which are mapped to HU straight into the
    node's own image memory: no second CT-sized array, and it goes when the node goes."""
    shape = volume_shape_of(volume_node)
    if tuple(reconstruction.shape) != tuple(shape):
        raise GeometryMismatchError("reconstruction has shape {}, the volume {}".format(
            reconstruction.shape, shape))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    created.append(node)
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras_of(volume_node)))
    if isinstance(reconstruction, np.ndarray):
        _set_voxels(node, reconstruction, share)
    else:
        k, j, i = shape
        image = vtk.vtkImageData()
        image.SetDimensions(int(i), int(j), int(k))
        image.AllocateScalars(vtk.VTK_SHORT, 1)
        voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i)
        reconstruction.to_hu(out=voxels)
        node.SetAndObserveImageData(image)
    _add_ct_display(scene, node)
    return node


def _check_geometry(volume_node, result: AnalysisResult) -> None:
    shape = volume_shape_of(volume_node)
    if tuple(result.volume.array.shape[:3]) != tuple(shape):
        raise GeometryMismatchError("the result's grid {} is not the volume's {}".format(
            tuple(result.volume.array.shape), shape))
    if not np.allclose(result.volume.ijk_to_ras, ijk_to_ras_of(volume_node), atol=1e-4):
        raise GeometryMismatchError("the result was computed for a differently placed volume")


def _load_terminology() -> None:
    """Make our codes selectable in Slicer's terminology selector; never fails the analysis."""
    try:
        from . import headless

        terminology.ensure_loaded(headless.get_logic("Terminologies"))
    except Exception as exc:  # noqa: BLE001 - selector convenience only
        _LOG.debug("terminology context not loaded: %s", exc)


# ------------------------------------------------------------------ the public entry point
def create_result_nodes(scene, input_volume_node, result: AnalysisResult, replace: bool = False,
                        options: Optional[ResultOptions] = None) -> ResultNodes:
    """Show ``result`` in ``scene`` next to ``input_volume_node`` (which is never modified).

    Raises ResultsExistError when the volume already has results and ``replace`` is False.
    On any error the scene is left exactly as it was (previous results included).
    """
    options = options or ResultOptions()
    _load_terminology()
    if input_volume_node is None or input_volume_node.GetScene() is not scene:
        raise ValueError("the input volume node must be in the given scene")
    previous = find_result_nodes(scene, input_volume_node)
    if previous is not None and not replace:
        raise ResultsExistError("'{}' already has ChestCTMTL results; pass replace=True to "
                                "replace them".format(input_volume_node.GetName()))
    _check_geometry(input_volume_node, result)
    sh = _sh(scene)
    base = input_volume_node.GetName() or "volume"
    created: list = []
    folder = 0
    try:
        folder = sh.CreateFolderItem(_folder_parent(sh, input_volume_node), FOLDER_PREFIX + base)
        sh.SetItemAttribute(folder, ROLE_ATTR, ROLE_FOLDER)
        sh.SetItemAttribute(folder, INPUT_VOLUME_ID_ATTR, input_volume_node.GetID())
        for key, value in _classification_attributes(result).items():
            sh.SetItemAttribute(folder, key, value)
        nodes = ResultNodes(folder_item=folder, input_volume=input_volume_node)
        if options.segmentation and result.lesion_masks:
            nodes.segmentation = _build_segmentation(scene, input_volume_node, result.lesion_masks,
                                                     base + " lesions", options.show_3d, created,
                                                     share=options.share_arrays)
        if options.segmentation and options.lungs and result.lung_labels is not None:
            nodes.lungs = _build_lungs(scene, input_volume_node, result.lung_labels,
                                       base + " lungs", created, share=options.share_arrays)
        if options.reconstruction and result.has_reconstruction:
            nodes.reconstruction = _build_reconstruction(
                scene, input_volume_node, result.reconstruction_source(),
                base + " reconstruction", created, share=options.share_arrays)
        findings = [f for f in result.findings if float(f.score) >= options.score_threshold] \
            if options.detections else []
        for finding in findings:
            nodes.rois.append(_build_roi(scene, finding, created))
        if options.measurements:
            for finding in findings:
                nodes.axes.extend(_build_axes(scene, finding, created))
        nodes.table, nodes.classification_table = _build_tables(scene, result, findings, base,
                                                                created)
        for node in nodes.data_nodes():
            _tag(node, node.GetAttribute(ROLE_ATTR) or _role_of(nodes, node), input_volume_node)
            _put_in_folder(sh, node, folder)
        show_measurement_descriptions(nodes)
    except BaseException:
        for node in reversed(created):
            _remove_node(scene, node)
        if folder:
            sh.RemoveItem(folder, False, True)
        raise
    if previous is not None:
        remove_result_nodes(scene, previous)
    return nodes


def _role_of(nodes: ResultNodes, node) -> str:
    if node is nodes.segmentation:
        return ROLE_SEGMENTATION
    if node is nodes.lungs:
        return ROLE_LUNGS
    if node is nodes.reconstruction:
        return ROLE_RECONSTRUCTION
    if node is nodes.table:
        return ROLE_TABLE
    if node is nodes.classification_table:
        return ROLE_CLASSIFICATION_TABLE
    if any(node is axis for axis in nodes.axes):
        return ROLE_AXIS
    return ROLE_ROI


# the findings' markups (ROIs and axis lines) live in their own module; names kept here
from .markups import (_build_axes, _build_roi, axis_name, measurement_text,  # noqa: E402,F401
                      roi_name, show_measurement_descriptions)
from .tables import (_add_columns, _build_tables, _classification_attributes,  # noqa: E402,F401
                     findings_rows, involvement_of)
