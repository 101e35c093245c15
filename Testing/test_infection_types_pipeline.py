"""A model with infection types gives the whole-CT outputs a ground-glass opacity and a
consolidation segment: disjoint, their union the covid-infection segment, terminology-coded in
the case files; a model without them gives exactly the segments it always gave."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ChestCTMTLLib.model import INFECTION_TYPES, ModelConfig, MultiTaskNet
from ChestCTMTLLib.modelio import save_model_folder
from ChestCTMTLLib.postprocess import assign_infection_types
from ChestCTMTLLib.representation import Representation

GGO, CONS = INFECTION_TYPES


def _typed_model(path, ct):
    """A small typed model whose infection channel fires nearly everywhere and whose type head
    is centred on this CT's own model inputs, so both types appear on it."""
    from ChestCTMTLLib.orientation import axial_view
    from ChestCTMTLLib.representation import geometry_for_volume, hu_slices_to_model

    cfg = ModelConfig(input_size=64, infection_types=INFECTION_TYPES)
    rep = Representation(input_size=64)
    torch.manual_seed(0)
    net = MultiTaskNet(cfg)
    view = axial_view(ct.ijk_to_ras, ct.array.shape)
    canon = view.to_canonical(ct.array)
    s_mm, r_mm, c_mm = view.spacing
    geometry, region = geometry_for_volume(canon, (c_mm, r_mm, s_mm), rep)
    x = hu_slices_to_model(canon[np.asarray(region.slices)], geometry, rep).float()
    with torch.no_grad():
        net.seg_decoder.out.bias[:] = torch.tensor([6.0, -20.0])
        net.seg_decoder.type_out.weight.mul_(200.0)  # confident types, not 0.5/0.5 ties
        net.eval()
        diff = net(x, tasks=["segmentation"])["type_logits"].diff(dim=1)
        net.seg_decoder.type_out.bias[1] -= float(diff.median())
    return save_model_folder(net, cfg, {"id": "typed-test"}, path, representation=rep)


def test_assigned_types_follow_the_model_reading_slab_by_slab():
    from ChestCTMTLLib.model import infection_type_masks

    rng = np.random.default_rng(0)
    infection = rng.random((40, 9, 11)) > 0.4
    probs = [rng.integers(0, 256, (40, 9, 11)).astype(np.uint8) for _ in range(2)]
    probs[1][0, 0, :] = probs[0][0, 0, :]  # ties keep the first type, as argmax does
    assigned = assign_infection_types(infection, probs, chunk=7)
    expected = infection_type_masks(infection.astype(np.float32), np.stack(probs, axis=1))
    for k in range(2):
        np.testing.assert_array_equal(assigned == k + 1, expected[:, k])
    assert not assigned[~infection].any()


@pytest.fixture(scope="module")
def typed_result(small_ct, tmp_path_factory):
    from ChestCTMTLLib.inference import Analyzer

    folder = _typed_model(tmp_path_factory.mktemp("typed") / "model", small_ct)
    return Analyzer(str(folder), device="cpu", num_threads=1).apply(small_ct)


def test_the_two_types_split_the_infection_segment(typed_result):
    masks = typed_result.lesion_masks
    assert list(masks)[-2:] == [GGO, CONS]
    ggo, cons, infection = masks[GGO] > 0, masks[CONS] > 0, masks["covid-infection"] > 0
    assert ggo.any() and cons.any(), "the fixture model must produce both types"
    assert not (ggo & cons).any()
    np.testing.assert_array_equal(ggo | cons, infection)


def test_the_case_files_hold_both_types_with_their_codes(typed_result, tmp_path):
    pytest.importorskip("slicer", reason="slicer-core (real MRML) is needed")
    from ChestCTMTLMRML import files, headless, nodes

    case = files.write_case(None, typed_result.volume, typed_result, tmp_path / "case")
    with headless.scratch_scene() as scene:
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        storage.SetFileName(str(case / "lesions.seg.nrrd"))
        assert storage.ReadData(seg)
        volume = nodes.volume_node_from_ct(scene, typed_result.volume, "ct")
        segmentation = seg.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName()
                 for i in range(segmentation.GetNumberOfSegments())]
        assert names == list(typed_result.lesion_masks)
        for name in (GGO, CONS):
            segment_id = segmentation.GetSegmentIdBySegmentName(name)
            got = nodes.segment_mask_array(seg, segment_id, volume)
            np.testing.assert_array_equal(got, typed_result.lesion_masks[name])
            tags = str(segmentation.GetSegment(segment_id))
            assert ("112120" if name == GGO else "95436008") in tags


def test_a_model_without_types_gives_the_segments_it_always_gave(small_ct):
    from ChestCTMTLLib.inference import Analyzer

    result = Analyzer(None, device="cpu", num_threads=1).apply(small_ct)
    assert list(result.lesion_masks) == ["covid-infection", "nodule-mass"]
