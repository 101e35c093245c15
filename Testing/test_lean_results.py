"""The memory-lean forms of the analysis' outputs give exactly what the plain arrays gave:
lesion masks packed as bits, the reconstruction kept on the model grid, components labelled
inside their extent, and nodes that write and go without CT-sized copies."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ChestCTMTLLib.memory import release_free_memory
from ChestCTMTLLib.postprocess import components_26, label_26, mask_extent
from ChestCTMTLLib.results import LesionMasks


def _masks(shape=(6, 20, 30)):
    a = np.zeros(shape, np.uint8)
    b = np.zeros(shape, np.uint8)
    a[1:4, 2:9, 3:12] = 1
    b[3:5, 10:15, 20:25] = 1
    return {"covid-infection": a, "nodule-mass": b}


def test_lesion_masks_pack_and_read_back_each_type():
    masks = _masks()
    packed = LesionMasks.from_masks(masks)
    assert list(packed) == list(masks) and len(packed) == 2
    assert packed.labels.dtype == np.uint8 and packed.labels.shape == (6, 20, 30)
    for name, mask in masks.items():
        got = packed[name]
        assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 1}
        np.testing.assert_array_equal(got, mask)
        assert packed.any(name)
    assert packed == masks and packed == LesionMasks.from_masks(masks)
    got = packed["nodule-mass"]
    got[:] = 1  # a read mask is a copy: the result does not change
    np.testing.assert_array_equal(packed["nodule-mass"], masks["nodule-mass"])


def test_lesion_masks_shared_layer_only_without_overlap():
    packed = LesionMasks.from_masks(_masks())
    labels, values = packed.shared_layer()
    assert labels is packed.labels and values == {"covid-infection": 1, "nodule-mass": 2}
    overlapping = _masks()
    overlapping["nodule-mass"][2, 3, 4] = 1  # one voxel of both types
    both = LesionMasks.from_masks(overlapping)
    assert both.shared_layer() is None
    assert both["covid-infection"][2, 3, 4] == 1 and both["nodule-mass"][2, 3, 4] == 1
    with pytest.raises(ValueError, match="up to 8"):
        LesionMasks(["t%d" % i for i in range(9)], np.zeros((1, 1, 1), np.uint8))


def test_components_inside_the_extent_are_ndimage_labels_components():
    rng = np.random.default_rng(3)
    mask = np.zeros((20, 40, 50), bool)
    mask[3:17, 5:35, 7:45] = rng.random((14, 30, 38)) > 0.7
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    expected = [(sl, lab[sl] == i) for i, sl in enumerate(ndimage.find_objects(lab), start=1)]
    got = list(components_26(mask))
    assert len(got) == n == len(expected)
    for (sl_a, comp_a), (sl_b, comp_b) in zip(got, expected):
        assert sl_a == sl_b
        np.testing.assert_array_equal(comp_a, comp_b)
    sub, count, extent = label_26(mask)
    assert sub.dtype == np.uint16 and count == n
    assert extent == mask_extent(mask) == tuple(slice(int(np.flatnonzero(mask.any(axis=o))[0]),
                                                      int(np.flatnonzero(mask.any(axis=o))[-1]) + 1)
                                                for o in ((1, 2), (0, 2), (0, 1)))
    empty = np.zeros((4, 5, 6), bool)
    assert list(components_26(empty)) == [] and mask_extent(empty) == (slice(0, 0),) * 3


def test_many_components_fall_back_to_32_bit_labels():
    lab = np.zeros((1, 600, 600), bool)
    lab[0, ::2, ::2] = True  # 90,000 isolated voxels: more than 16 bits can number
    sub, count, _ = label_26(lab)
    assert count == 90000 and sub.dtype != np.uint16
    assert sub.max() == 90000


def test_release_free_memory_runs_where_glibc_has_malloc_trim():
    import platform
    import sys

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert release_free_memory() is glibc


@pytest.fixture(scope="module")
def analysed(small_ct):
    from ChestCTMTLLib.inference import Analyzer

    return Analyzer(None, device="cpu", num_threads=1).apply(small_ct)


def test_the_reconstruction_is_kept_on_the_model_grid(analysed, small_ct):
    from ChestCTMTLLib.orientation import axial_view

    result = analysed
    maps = result.reconstruction_maps
    assert maps is not None and result.has_reconstruction
    # one model-grid image per analysed slice (a 512 x 512 CT's HU volume is 4x larger)
    side = maps.unit.shape[-1]
    assert maps.nbytes == len(result.analysed_slices) * side * side * maps.unit.element_size()
    before = maps.unit.clone()
    full = result.reconstruction_hu
    assert full.dtype == np.int16 and full.shape == small_ct.array.shape
    np.testing.assert_array_equal(full, result.reconstruction_hu)  # built the same each time
    out = np.zeros(full.shape, np.int16)
    assert maps.to_hu(out=out) is out
    np.testing.assert_array_equal(out, full)
    view = axial_view(small_ct.ijk_to_ras, small_ct.array.shape)
    canon = view.to_canonical(full)
    for k in range(canon.shape[0]):
        np.testing.assert_array_equal(result.reconstruction_canonical_slice(view, k), canon[k])
    assert bool((before == maps.unit).all())  # reading never changes the stored maps
    with pytest.raises(ValueError, match="int16 of shape"):
        maps.to_hu(out=np.zeros(full.shape, np.int32))


def test_a_float32_reconstruction_is_kept_in_16_bits_to_a_hundredth_of_a_hu():
    import torch
    from ChestCTMTLLib.network import ModelGridReconstruction as M

    # known answers: the unit range's ends, values outside it (clipped, as to_hu clips), and a
    # dense ramp whose stored value may differ from the float by half a step at most
    ramp = torch.linspace(-0.1, 1.1, 100003, dtype=torch.float32)
    assert M.storage_dtype(torch.float32) == torch.int16
    assert M.storage_dtype(torch.bfloat16) == torch.bfloat16
    stored = M.quantize(ramp, torch.int16)
    assert stored.dtype == torch.int16 and stored.element_size() == 2
    back = M(stored[None], np.zeros(1), None, None, (1, 1, 1), (-1000.0, 200.0))._unit_rows(0)
    want = ramp.clamp(0.0, 1.0)
    assert float(back.min()) == 0.0 and float(back.max()) == 1.0
    err_hu = float((back - want).abs().max()) * 1200.0
    assert err_hu <= 1200.0 / M.STEPS / 2 + 1e-4, err_hu
    assert err_hu > 0.0  # it is a quantisation, stated as such
    bf = ramp.to(torch.bfloat16)
    assert bool((M.quantize(bf, torch.bfloat16) == bf).all())  # bfloat16 kept exactly


def test_result_nodes_share_the_packed_lesions_and_leave_them_intact(analysed, tmp_path):
    from ChestCTMTLMRML import files, headless, nodes

    result = analysed
    assert isinstance(result.lesion_masks, LesionMasks)
    before = result.lesion_masks.labels.copy()
    lungs_before = None if result.lung_labels is None else result.lung_labels.copy()
    with headless.scratch_scene() as scene:
        volume_node = nodes.volume_node_from_ct(scene, result.volume, "ct", share=True)
        made = nodes.create_result_nodes(scene, volume_node, result,
                                         options=nodes.ResultOptions(share_arrays=True))
        recon = nodes.slicer.util.arrayFromVolume(made.reconstruction)
        np.testing.assert_array_equal(recon, result.reconstruction_hu)
        nodes.remove_result_nodes(scene, made)
        nodes._remove_node(scene, volume_node)
    np.testing.assert_array_equal(result.lesion_masks.labels, before)
    if lungs_before is not None:
        np.testing.assert_array_equal(result.lung_labels, lungs_before)
    case = files.write_case(None, result.volume, result, tmp_path / "case")
    assert (case / "lesions.seg.nrrd").is_file() and (case / "reconstruction.nrrd").is_file()
    np.testing.assert_array_equal(result.lesion_masks.labels, before)
