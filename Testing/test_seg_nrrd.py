"""The shared-layer .seg.nrrd writer gives the file Slicer's segmentation storage node gives:
the same header fields and values and the same voxels, read back by Slicer's own reader."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML) is needed")

from ChestCTMTLLib.results import LesionMasks  # noqa: E402
from ChestCTMTLMRML import headless, nodes, seg_nrrd  # noqa: E402
from mrml_testutil import synthetic_result, with_lungs  # noqa: E402


def _header_and_voxels(path):
    raw = path.read_bytes()
    end = raw.index(b"\n\n")
    header = [line for line in raw[:end].decode("latin-1").splitlines()
              if not line.startswith("#")]
    return header, gzip.decompress(raw[end + 2:])


def _storage_node_file(node, path):
    storage = node.CreateDefaultStorageNode()
    node.GetScene().AddNode(storage)
    storage.SetFileName(str(path))
    storage.SetUseCompression(True)
    assert storage.WriteData(node)
    node.GetScene().RemoveNode(storage)
    return path


def _read_back(path, scene):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return node


def _result_nodes(scene, result, share=True):
    volume_node = nodes.volume_node_from_ct(scene, result.volume, "ct", share=True)
    return volume_node, nodes.create_result_nodes(
        scene, volume_node, result, options=nodes.ResultOptions(share_arrays=share))


def _packed(result):
    result.lesion_masks = LesionMasks.from_masks(result.lesion_masks)
    return result


@pytest.mark.parametrize("which", ["segmentation", "lungs"])
def test_shared_layer_file_is_the_storage_nodes_file(small_ct, tmp_path, which):
    result = _packed(with_lungs(synthetic_result(small_ct)))
    with headless.scratch_scene() as scene:
        volume_node, results = _result_nodes(scene, result)
        node = getattr(results, which)
        reference = _storage_node_file(node, tmp_path / "storage.seg.nrrd")
        fast = tmp_path / "fast.seg.nrrd"
        assert seg_nrrd.write_shared_layer(node, fast)
        header, voxels = _header_and_voxels(fast)
        ref_header, ref_voxels = _header_and_voxels(reference)
        assert header == ref_header
        assert voxels == ref_voxels
        # compressed as the storage node compresses (a level of 0, e.g. from passing -1 to the
        # writer's clamping setter, would store the voxels as they are)
        assert fast.stat().st_size <= 1.05 * reference.stat().st_size + 64
        assert fast.stat().st_size < 0.5 * len(voxels)
        quick = tmp_path / "quick.seg.nrrd"  # the level the case files use
        assert seg_nrrd.write_shared_layer(node, quick, compression_level=1)
        assert _header_and_voxels(quick) == (header, voxels)
        assert quick.stat().st_size < 0.5 * len(voxels)
        # Slicer's reader gives every segment back with its voxels, name and terminology
        back = _read_back(fast, scene)
        for segment_id in seg_nrrd._segment_ids(node.GetSegmentation()):
            got = nodes.segment_mask_array(back, segment_id, volume_node)
            want = nodes.segment_mask_array(node, segment_id, volume_node)
            np.testing.assert_array_equal(got, want)
            assert got.any()
            seg_back = back.GetSegmentation().GetSegment(segment_id)
            seg_orig = node.GetSegmentation().GetSegment(segment_id)
            assert seg_back.GetName() == seg_orig.GetName()
            assert seg_nrrd._segment_tags(seg_back) == seg_nrrd._segment_tags(seg_orig)


def test_a_tag_added_later_is_written_as_slicer_writes_it(small_ct, tmp_path):
    result = _packed(synthetic_result(small_ct))
    with headless.scratch_scene() as scene:
        _, results = _result_nodes(scene, result)
        node = results.segmentation
        segment = node.GetSegmentation().GetNthSegment(0)
        segment.SetTag("Segmentation.Status", "inprogress")
        reference = _storage_node_file(node, tmp_path / "storage.seg.nrrd")
        assert seg_nrrd.write_shared_layer(node, tmp_path / "fast.seg.nrrd")
        assert _header_and_voxels(tmp_path / "fast.seg.nrrd") == _header_and_voxels(reference)
        assert any("Segmentation.Status:inprogress|" in line
                   for line in _header_and_voxels(reference)[0])


def test_overlapping_types_are_left_to_the_storage_node(small_ct, tmp_path):
    result = synthetic_result(small_ct)
    masks = dict(result.lesion_masks)
    masks["nodule-mass"] = masks["covid-infection"].copy()  # every voxel holds both types
    result.lesion_masks = LesionMasks.from_masks(masks)
    assert result.lesion_masks.shared_layer() is None
    with headless.scratch_scene() as scene:
        _, results = _result_nodes(scene, result)
        target = tmp_path / "fast.seg.nrrd"
        assert not seg_nrrd.write_shared_layer(results.segmentation, target)
        assert not target.exists()


def test_the_shared_layer_is_the_results_own_memory(small_ct):
    """Written from the analysis' LesionMasks array itself: no CT-sized copy is made."""
    result = _packed(synthetic_result(small_ct))
    with headless.scratch_scene() as scene:
        _, results = _result_nodes(scene, result, share=True)
        layer = results.segmentation.GetSegmentation().GetNthSegment(0).GetRepresentation(
            "Binary labelmap")
        from vtk.util import numpy_support

        voxels = numpy_support.vtk_to_numpy(layer.GetPointData().GetScalars())
        assert np.shares_memory(voxels, result.lesion_masks.labels)
