"""Model, input representation and model folders: shapes, task switches, known-answer decoding,
exact geometry round trips, and every way a model folder can be refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ChestCTMTLLib import modelio
from ChestCTMTLLib.model import (TASKS, Detection2D, ModelConfig, MultiTaskNet, count_parameters,
                                 decode_detections, rescore_detections)
from ChestCTMTLLib.representation import (Representation, find_lung_region, geometry_for_image,
                                          gray8_to_unit, hu_to_unit, unit_to_hu)
from ChestCTMTLLib.results import CLASS_NAMES, LESION_TYPES


# --------------------------------------------------------------------------- representation

def test_hu_window_maps_air_and_soft_tissue():
    u = hu_to_unit(np.array([-2000, -1000, -400, 200, 3000]), (-1000, 200))
    np.testing.assert_allclose(u, [0, 0, 0.5, 1, 1], atol=1e-6)
    np.testing.assert_allclose(unit_to_hu(u[1:4], (-1000, 200)), [-1000, -400, 200], atol=1e-3)


def test_gray8_colour_uses_luma_and_rejects_16bit():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    np.testing.assert_allclose(gray8_to_unit(rgb), 0.299, atol=1e-6)
    with pytest.raises(ValueError):
        gray8_to_unit(np.full((4, 4), 4000, np.uint16))


@pytest.mark.parametrize("shape", [(300, 200), (369, 273), (256, 256), (512, 512), (120, 400)])
def test_geometry_round_trip_is_exact_for_masks(shape):
    h, w = shape
    mask = np.zeros(shape, np.float32)
    mask[h // 4:h // 2, w // 3:w // 3 + max(8, w // 5)] = 1
    g = geometry_for_image(shape, 256)
    back = g.to_input(g.to_model(mask)).numpy()[0, 0] >= 0.5
    dice = 2 * (back & (mask > 0)).sum() / (back.sum() + mask.sum())
    assert back.shape == shape
    assert dice > 0.95
    # points map both ways exactly
    x, y = g.input_to_model_xy(np.array([0.0, w]), np.array([0.0, h]))
    c, r = g.model_to_input_xy(x, y)
    np.testing.assert_allclose(c, [0, w], atol=1e-9)
    np.testing.assert_allclose(r, [0, h], atol=1e-9)


def test_geometry_fill_outside_box():
    g = geometry_for_image((100, 100), 64, box=(20, 60, 30, 70))
    out = g.to_input(torch.ones(1, 1, 64, 64), fill=-5.0).numpy()[0, 0]
    assert out[0, 0] == -5.0 and out[40, 50] == 1.0


def test_lung_region_on_phantom_excludes_table():
    """Body ellipse with two air 'lungs' and a separate table below: the box hugs the lungs."""
    k, h, w = 12, 256, 256
    yy, xx = np.mgrid[0:h, 0:w]
    vol = np.full((k, h, w), -1000, np.int16)
    body = ((yy - 120) / 90.0) ** 2 + ((xx - 128) / 110.0) ** 2 <= 1
    lung_l = ((yy - 115) / 55.0) ** 2 + ((xx - 80) / 35.0) ** 2 <= 1
    lung_r = ((yy - 115) / 55.0) ** 2 + ((xx - 176) / 35.0) ** 2 <= 1
    sl = np.full((h, w), -1000, np.int16)
    sl[body] = 40
    sl[lung_l | lung_r] = -850
    sl[235:240, 10:246] = 300  # table
    vol[2:10] = sl
    vol[:2] = np.where(body, 40, -1000)
    vol[10:] = np.where(body, 40, -1000)
    region = find_lung_region(vol, (1.0, 1.0, 2.0), margin_mm=4)
    r0, r1, c0, c1 = region.box
    assert region.found
    assert 50 <= r0 <= 62 and 168 <= r1 <= 180, region.box
    assert 36 <= c0 <= 46 and 210 <= c1 <= 220, region.box
    assert region.slices[0] == 0 and region.slices[-1] == 11  # 2..9 plus 4 mm margin (2 slices)


def test_lung_region_on_real_ct(lidc0002_nifti):
    import SimpleITK as sitk

    img = sitk.ReadImage(str(lidc0002_nifti))
    vol = sitk.GetArrayFromImage(img)
    region = find_lung_region(vol, img.GetSpacing())
    r0, r1, c0, c1 = region.box
    assert region.found
    assert (r1 - r0) < 400 and (c1 - c0) < 480  # not the whole 512 slice
    nodule_row, nodule_col, nodule_k = 344 + 15, 325 + 24, 176 + 11  # nodules.csv bbox centre
    assert r0 < nodule_row < r1 and c0 < nodule_col < c1 and nodule_k in set(region.slices)


# --------------------------------------------------------------------------- model

@pytest.mark.parametrize("backbone", ["fast", "vgg13", "resnet50"])
def test_all_backbones_give_all_outputs(backbone):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, input_size=64)
    net = MultiTaskNet(cfg).eval()
    with torch.inference_mode():
        out = net(torch.rand(2, 1, 64, 64))
    t = len(LESION_TYPES)
    assert out["class_logits"].shape == (2, len(CLASS_NAMES))
    assert out["seg_logits"].shape == (2, t, 64, 64)
    assert out["recon"].shape == (2, 1, 64, 64)
    assert out["det_heatmap"].shape == (2, t, 16, 16)
    assert out["det_size"].shape == (2, 2, 16, 16) and out["det_offset"].shape == (2, 2, 16, 16)
    assert count_parameters(net) > 0


def test_fast_backbone_is_much_smaller_than_paper_backbones():
    fast = count_parameters(MultiTaskNet(ModelConfig(backbone="fast")))
    vgg = count_parameters(MultiTaskNet(ModelConfig(backbone="vgg13")))
    res = count_parameters(MultiTaskNet(ModelConfig(backbone="resnet50")))
    assert fast * 8 < min(vgg, res)  # 1.03 M vs 9.8 M (vgg13) and 24.7 M (resnet50)


def test_switched_off_heads_are_not_computed():
    net = MultiTaskNet(ModelConfig(input_size=64)).eval()
    called = []
    for name in ("classifier", "seg_decoder", "recon_decoder", "det_head"):
        getattr(net, name).register_forward_hook(lambda m, i, o, n=name: called.append(n))
    with torch.inference_mode():
        out = net(torch.rand(1, 1, 64, 64), tasks=["segmentation"])
    assert set(out) == {"seg_logits"}
    assert called == ["seg_decoder"]


def test_heads_not_enabled_are_not_built_and_refused():
    net = MultiTaskNet(ModelConfig(input_size=64, tasks=("classification",)))
    assert net.seg_decoder is None and net.det_head is None and net.recon_decoder is None
    with pytest.raises(ValueError, match="not enabled"):
        net(torch.rand(1, 1, 64, 64), tasks=["segmentation"])


def test_input_size_must_be_multiple_of_32():
    net = MultiTaskNet(ModelConfig(input_size=64))
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.rand(1, 1, 60, 64))


def test_reconstruction_depends_only_on_bottleneck():
    torch.manual_seed(1)
    # train mode: BatchNorm uses batch statistics, so an untrained net does not shrink the
    # signal to ~1e-9 as it does with default running statistics
    net = MultiTaskNet(ModelConfig(input_size=64)).train()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        feats = net.encode(x)
        real = net.recon_decoder(feats[-1])
        zeroed = net.recon_decoder(torch.zeros_like(feats[-1]))
        assert (real - zeroed).abs().max() > 1e-4  # zeroing the bottleneck changes the output
        # and the same bottleneck gives the same output whatever the skip features are
        again = net.recon_decoder(feats[-1].clone())
        assert torch.equal(real, again)
    assert "skip" not in str(type(net.recon_decoder)).lower()
    assert all(not isinstance(m, type(net.seg_decoder)) for m in net.recon_decoder.modules())


def test_config_round_trip_and_validation():
    cfg = ModelConfig(backbone="vgg13", input_size=128, tasks=("segmentation", "classification"))
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.tasks == ("classification", "segmentation")  # canonical order
    with pytest.raises(ValueError):
        ModelConfig(backbone="alexnet")
    with pytest.raises(ValueError):
        ModelConfig.from_dict({**cfg.to_dict(), "extra": 1})


# --------------------------------------------------------------------------- detection decoding

def test_decode_detections_known_answer():
    hm = torch.full((1, 2, 16, 16), -10.0)
    hm[0, 1, 5, 7] = 3.0  # one peak: type 1, cell (row 5, col 7)
    hm[0, 1, 5, 8] = 1.0  # its neighbour is suppressed by the 3x3 max
    size = torch.zeros(1, 2, 16, 16)
    size[0, :, 5, 7] = torch.tensor([np.log(20.0), np.log(10.0)])
    off = torch.zeros(1, 2, 16, 16)
    off[0, :, 5, 7] = torch.tensor([0.5, 0.25])
    dets = decode_detections(hm, size, off, stride=4, lesion_types=LESION_TYPES, score_threshold=0.3)
    assert len(dets) == 1 and len(dets[0]) == 1
    d = dets[0][0]
    assert d.type == LESION_TYPES[1] and d.type_index == 1
    assert d.score == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item(), rel=1e-5)
    assert d.center == pytest.approx((30.0, 21.0))
    assert (d.x1 - d.x0, d.y1 - d.y0) == pytest.approx((20.0, 10.0))


def test_rescore_detections_needs_segmentation_agreement():
    seg = torch.zeros(1, 2, 64, 64)
    seg[0, 1, 10:20, 30:40] = 0.81  # a nodule-mass blob; nothing of type 0 anywhere
    dets = [[Detection2D(1, LESION_TYPES[1], 0.64, 28.0, 8.0, 42.0, 22.0),  # on the blob
             Detection2D(1, LESION_TYPES[1], 0.90, 0.0, 40.0, 10.0, 50.0),  # blob-free area
             Detection2D(0, LESION_TYPES[0], 0.64, 28.0, 8.0, 42.0, 22.0)]]  # other type's channel
    out = rescore_detections(dets, seg, score_threshold=0.3)
    assert len(out[0]) == 1
    d = out[0][0]
    assert d.score == pytest.approx(np.sqrt(0.64 * 0.81))  # geometric mean, box kept as it was
    assert (d.x0, d.y0, d.x1, d.y1, d.type_index) == (28.0, 8.0, 42.0, 22.0, 1)
    assert len(rescore_detections(dets, seg, score_threshold=0.0)[0]) == 3


def test_decode_detections_threshold_and_clipping():
    hm = torch.full((2, 1, 8, 8), -10.0)
    hm[1, 0, 0, 0] = 5.0
    size = torch.full((2, 2, 8, 8), float(np.log(40.0)))
    dets = decode_detections(hm, size, torch.zeros(2, 2, 8, 8), 4, ["a"], 0.5)
    assert dets[0] == []
    d = dets[1][0]
    assert d.x0 == 0.0 and d.y0 == 0.0 and d.x1 == pytest.approx(20.0)


# --------------------------------------------------------------------------- model folders

def test_model_folder_round_trip(tmp_path):
    folder = modelio.create_untrained_model_folder(tmp_path / "m", ModelConfig(input_size=64), seed=3)
    lm = modelio.load_model(folder)
    assert lm.identity.sha256 == modelio.sha256_file(folder / "model.safetensors")
    card = json.loads((folder / "model.json").read_text())
    for key in ("architecture", "representation", "classes", "lesion_types", "training_data", "metrics",
                "limits", "version", "id", "sha256"):
        assert key in card
    torch.manual_seed(3)
    ref = MultiTaskNet(ModelConfig(input_size=64)).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        a, b = lm.model(x), ref(x)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert isinstance(lm.representation, Representation) and lm.representation.input_size == 64


def test_missing_model_folder_and_files(tmp_path):
    with pytest.raises(modelio.ModelLoadError, match="does not exist"):
        modelio.load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(modelio.ModelLoadError, match="model.json"):
        modelio.load_model(tmp_path / "empty")
    folder = modelio.create_untrained_model_folder(tmp_path / "m", ModelConfig(input_size=64))
    (folder / "model.safetensors").unlink()
    with pytest.raises(modelio.ModelLoadError, match="no weights"):
        modelio.load_model(folder)


def test_corrupt_weights_are_refused(tmp_path):
    folder = modelio.create_untrained_model_folder(tmp_path / "m", ModelConfig(input_size=64))
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(modelio.ModelLoadError, match="SHA-256"):
        modelio.load_model(folder)


def test_truncated_weights_with_matching_checksum_are_refused(tmp_path):
    folder = modelio.create_untrained_model_folder(tmp_path / "m", ModelConfig(input_size=64))
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    card = json.loads((folder / "model.json").read_text())
    card["sha256"] = modelio.sha256_file(w)
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(modelio.ModelLoadError, match="cannot be read"):
        modelio.load_model(folder)


def test_card_that_does_not_match_weights_is_refused(tmp_path):
    folder = modelio.create_untrained_model_folder(tmp_path / "m", ModelConfig(input_size=64))
    card = json.loads((folder / "model.json").read_text())
    fast_widths = card["architecture"]["widths"]
    card["architecture"]["backbone"] = "vgg13"
    card["architecture"]["widths"] = [64, 128, 256, 512, 512]
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(modelio.ModelLoadError, match="does not match its weights"):
        modelio.load_model(folder)
    card["architecture"]["backbone"] = "fast"
    card["architecture"]["widths"] = fast_widths
    card["lesion_types"] = ["something-else", "nodule-mass"]
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(modelio.ModelLoadError, match="disagree"):
        modelio.load_model(folder)
    (folder / "model.json").write_text("{not json")
    with pytest.raises(modelio.ModelLoadError, match="not valid JSON"):
        modelio.load_model(folder)


def test_save_is_atomic_and_replaces(tmp_path):
    cfg = ModelConfig(input_size=64)
    a = modelio.create_untrained_model_folder(tmp_path / "m", cfg, seed=0)
    sha_a = modelio.read_card(a)["sha256"]
    modelio.create_untrained_model_folder(tmp_path / "m", cfg, seed=1)
    assert modelio.read_card(a)["sha256"] != sha_a
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp or old folders left


def test_registry_default_model(tmp_path, monkeypatch):
    res = tmp_path / "Resources"
    res.mkdir()
    (res / "models.json").write_text(json.dumps({"default": None, "models": {}}))
    monkeypatch.setenv("CHESTCTMTL_RESOURCES", str(res))
    with pytest.raises(modelio.ModelLoadError, match="no bundled model yet"):
        modelio.default_model_dir()
    folder = modelio.create_untrained_model_folder(res / "Models" / "m1", ModelConfig(input_size=64))
    modelio.register_model(folder)
    reg = json.loads((res / "models.json").read_text())
    assert reg["models"]["untrained-fast-seed0"]["path"] == "Models/m1"
    assert modelio.default_model_dir() == res / "Models" / "m1"
    modelio.load_model(modelio.default_model_dir())


def test_bundled_registry_is_valid():
    reg = modelio.read_registry()
    assert set(reg) >= {"default", "models"}
    if reg["default"]:
        lm = modelio.load_model(modelio.default_model_dir())
        assert lm.card["id"] == reg["default"]
        size = (modelio.default_model_dir() / "model.safetensors").stat().st_size
        assert size < 50 * 1024 * 1024


def test_tasks_constant():
    assert TASKS == ("classification", "segmentation", "reconstruction", "detection")


def test_update_card_keeps_weights_fields_locked(tmp_path):
    folder = modelio.create_untrained_model_folder(tmp_path / "m", ModelConfig(input_size=64))
    card = modelio.update_card(folder, {"metrics": {"dice": 0.5}, "limits": ["x"]})
    assert card["metrics"] == {"dice": 0.5}
    modelio.load_model(folder)  # still valid
    with pytest.raises(ValueError, match="cannot change"):
        modelio.update_card(folder, {"sha256": "0" * 64})
