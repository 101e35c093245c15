"""reconstruction.nrrd written slab by slab: the same voxels as the whole HU volume, the header
of Slicer's volume storage node, read back by it; and a slab that does not continue the
volume is refused without a file left behind."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from ChestCTMTLLib import nrrd_file

torch = pytest.importorskip("torch", reason="the model-grid reconstruction is a torch tensor")


def _synthetic_reconstruction(perm, flips, dtype):
    """Known answers: random model-grid maps on some canonical slices of a volume stored in
    the order ``perm``/``flips`` (axial, sagittal-like or coronal-like, flipped or not)."""
    from ChestCTMTLLib.network import ModelGridReconstruction
    from ChestCTMTLLib.orientation import AxialView
    from ChestCTMTLLib.representation import geometry_for_image

    shape = (37, 23, 29)  # input (k, j, i)
    canonical = tuple(shape[a] for a in perm)
    side = 16
    rng = np.random.default_rng(7)
    slices = np.sort(rng.choice(canonical[0], size=canonical[0] - 5, replace=False))
    unit = torch.from_numpy(rng.random((len(slices), side, side), dtype=np.float32))
    unit = ModelGridReconstruction.quantize(unit, ModelGridReconstruction.storage_dtype(dtype))
    geometry = geometry_for_image(canonical[1:], input_size=side)
    view = AxialView(perm, flips, shape, (1.0, 1.0, 1.0))
    return ModelGridReconstruction(unit, slices, geometry, view, shape, (-1000.0, 400.0))


@pytest.mark.parametrize("perm,flips", [((0, 1, 2), (False, False, False)),
                                        ((0, 1, 2), (True, True, False)),
                                        ((0, 2, 1), (True, False, True)),
                                        ((1, 0, 2), (False, True, False)),
                                        ((2, 1, 0), (True, False, False))])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_slabs_are_the_whole_hu_volume_in_pieces(perm, flips, dtype):
    maps = _synthetic_reconstruction(perm, flips, getattr(torch, dtype))
    whole = maps.to_hu()
    from ChestCTMTLLib.volume import AIR_HU

    empty = (maps.view.to_canonical(whole) == AIR_HU).all(axis=(1, 2))
    assert empty.any() and not empty.all()  # analysed slices and slices left as air
    got, expected_k0 = [], 0
    for k0, slab in maps.hu_slabs(depth=5):
        assert k0 == expected_k0 and slab.dtype == np.int16 and slab.shape[1:] == whole.shape[1:]
        got.append(slab)
        expected_k0 += slab.shape[0]
    np.testing.assert_array_equal(np.concatenate(got), whole)
    assert len(got) == (8 if perm[0] == 0 else 1)  # 37 slices in slabs of 5; or one piece


def _header_and_voxels(path):
    raw = path.read_bytes()
    end = raw.index(b"\n\n")
    return raw[:end].decode("ascii").splitlines(), gzip.decompress(raw[end + 2:])


def _numbers(line):
    text = line.split(":", 1)[1]
    for c in "(),":
        text = text.replace(c, " ")
    return [float(v) for v in text.split()]


def test_a_slab_out_of_order_leaves_no_file(tmp_path):
    target = tmp_path / "r.nrrd"
    slabs = [(0, np.zeros((2, 3, 4), np.int16)), (3, np.zeros((2, 3, 4), np.int16))]
    with pytest.raises(ValueError, match="does not continue"):
        nrrd_file.write_slabs(target, (4, 3, 4), np.eye(4), iter(slabs))
    with pytest.raises(ValueError, match="covered 2 of 4"):
        nrrd_file.write_slabs(target, (4, 3, 4), np.eye(4), iter(slabs[:1]))
    assert list(tmp_path.iterdir()) == []


def test_the_file_is_the_storage_nodes_and_slicer_reads_it_back(tmp_path, small_ct):
    pytest.importorskip("slicer", reason="slicer-core (real MRML) is needed")
    from ChestCTMTLMRML import files, headless, nodes

    # the real CT's voxels and an oblique placement (right-handed: Slicer's reader keeps the
    # array order of those) with awkward numbers
    voxels = small_ct.array.astype(np.int16)
    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1.0]]) @ np.diag([-1.0, 1.0, -1.0])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation @ np.diag([0.1, 0.7031249999, 2.5])
    ijk_to_ras[:3, 3] = [-175.3, 0.1, 1234.56789]
    mine = tmp_path / "mine.nrrd"
    nrrd_file.write_slabs(mine, voxels.shape, ijk_to_ras,
                          ((k0, voxels[k0:k0 + 4]) for k0 in range(0, voxels.shape[0], 4)))
    with headless.scratch_scene() as scene:
        from ChestCTMTLLib.volume import CTVolume

        node = nodes.volume_node_from_ct(scene, CTVolume(voxels, ijk_to_ras), "ct")
        theirs = tmp_path / "theirs.nrrd"
        files._write_with_storage_node(node, theirs)
        header_mine, data_mine = _header_and_voxels(mine)
        header_theirs, data_theirs = _header_and_voxels(theirs)
        # the same fields in the same order and number format; the placement's numbers agree
        # to 1e-9 mm (the storage node's come through two 4x4 inversions, RAS->IJK and back,
        # so their last digit may differ)
        assert [line.split(":")[0] for line in header_mine] == \
            [line.split(":")[0] for line in header_theirs]
        for line_mine, line_theirs in zip(header_mine, header_theirs):
            if line_mine.startswith(("space directions:", "space origin:")):
                np.testing.assert_allclose(_numbers(line_mine), _numbers(line_theirs), atol=1e-9)
            else:
                assert line_mine == line_theirs
        assert data_mine == data_theirs
        back = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "back")
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(mine))
        assert storage.ReadData(back)
        read = nodes.ct_from_volume_node(back)
        np.testing.assert_array_equal(read.array, voxels)
        np.testing.assert_allclose(read.ijk_to_ras, ijk_to_ras, atol=1e-9)


def test_the_case_files_reconstruction_is_the_results(tmp_path, small_ct):
    pytest.importorskip("slicer", reason="slicer-core (real MRML) is needed")
    from ChestCTMTLLib.inference import Analyzer
    from ChestCTMTLMRML import files, headless, nodes

    result = Analyzer(None, device="cpu", num_threads=1).apply(small_ct)
    assert result.reconstruction_maps is not None  # the streamed path, not an array
    case = files.write_case(None, small_ct, result, tmp_path / "case", preview=False)
    with headless.scratch_scene() as scene:
        back = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "back")
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(case / files.RECONSTRUCTION_FILE))
        assert storage.ReadData(back)
        read = nodes.ct_from_volume_node(back)
    np.testing.assert_array_equal(read.array, result.reconstruction_hu)
    np.testing.assert_allclose(read.ijk_to_ras, small_ct.ijk_to_ras, atol=1e-6)
    assert sorted(p.name for p in case.iterdir() if p.name.startswith(".")) == []


def test_voxels_compressed_ahead_give_the_same_file_byte_for_byte(tmp_path):
    maps = _synthetic_reconstruction((0, 1, 2), (True, True, False), torch.float32)
    ijk_to_ras = np.diag([0.7, 0.7, 2.5, 1.0])
    direct = tmp_path / "direct.nrrd"
    nrrd_file.write_slabs(direct, maps.shape, ijk_to_ras, maps.hu_slabs(depth=5))
    ahead = nrrd_file.SlabsAhead(maps.shape, ijk_to_ras, maps.hu_slabs(depth=5), source=maps)
    try:
        assert ahead.source is maps
        ahead.write(tmp_path / "ahead.nrrd")
    finally:
        ahead.close()
    assert (tmp_path / "ahead.nrrd").read_bytes() == direct.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ahead.nrrd", "direct.nrrd"]
    with pytest.raises(ValueError, match="closed"):
        ahead.write(tmp_path / "again.nrrd")
    assert not (tmp_path / "again.nrrd").exists()


def test_a_compression_ahead_reports_a_bad_slab_and_stops_when_closed(tmp_path):
    import threading

    bad = [(0, np.zeros((2, 3, 4), np.int16)), (3, np.zeros((2, 3, 4), np.int16))]
    ahead = nrrd_file.SlabsAhead((4, 3, 4), np.eye(4), iter(bad))
    with pytest.raises(ValueError, match="does not continue"):
        ahead.write(tmp_path / "r.nrrd")
    ahead.close()
    # closed while compressing: it stops at the next slab instead of running to the end
    gate, made = threading.Event(), []

    def endless():
        k0 = 0
        while True:
            made.append(k0)
            if k0 == 2:
                gate.wait(10)
            yield k0, np.zeros((1, 3, 4), np.int16)
            k0 += 1

    ahead = nrrd_file.SlabsAhead((10 ** 6, 3, 4), np.eye(4), endless())
    while len(made) < 3:
        threading.Event().wait(0.01)
    gate.set()
    ahead.close()
    assert len(made) <= 4
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no NRRD type"):
        nrrd_file.SlabsAhead((1, 1, 1), np.eye(4), iter([]), dtype=np.float64)
