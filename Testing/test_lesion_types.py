"""Infection types (ground-glass opacity vs consolidation): the model option, its loss, the
multi-class source and its split, ``predict``'s PNGs and the evaluation's type Dice."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ChestCTMTLLib.model import (INFECTION_TYPES, ModelConfig, MultiTaskNet, infection_type_masks,
                                 infection_type_probabilities)
from ChestCTMTLLib.modelio import load_model, save_model_folder
from ChestCTMTLLib.paths import resources_dir
from ChestCTMTLLib.representation import Representation

from ChestCTMTLTraining.config import load_config
from ChestCTMTLTraining.losses import MultiTaskLoss

V2 = resources_dir() / "Models" / "chestctmtl-fast-v2"
TYPES = list(INFECTION_TYPES)

# sum, sum |.|, sum of every 997th value of each output of chestctmtl-fast-v2 in float64 on
# _pattern(), recorded with the code before infection types existed (commit 64df460)
V2_REFERENCE = {
    "class_logits": [1.6505800432003834, 7.929288285690953, 1.2632831893136092],
    "det_heatmap": [-96423.20813942634, 96423.20813942634, -101.98623028462288],
    "det_offset": [6541.990542735257, 6541.990542735257, 6.37385049830864],
    "det_size": [38147.854163331795, 38147.854163331795, 38.97957475171312],
    "recon": [68816.66044025944, 68816.66044025944, 69.2092612813342],
    "seg_logits": [-2900184.9107051976, 2911409.207193178, -2914.090438809531],
}


def _pattern(s: int = 256) -> torch.Tensor:
    yy, xx = np.mgrid[0:s, 0:s] / s
    img = 0.5 + 0.3 * np.sin(9 * xx) * np.cos(7 * yy) + 0.2 * ((xx - 0.4) ** 2 + (yy - 0.55) ** 2 < 0.02)
    return torch.from_numpy(np.stack([img, img[::-1].copy()])[:, None])


# --------------------------------------------------------------------------- model

def test_bundled_v2_loads_with_the_same_architecture_and_outputs():
    lm = load_model(V2)
    assert lm.config.infection_types == ()
    assert lm.config.to_dict() == lm.card["architecture"]  # no new key in a v2 record
    net = lm.model.double().eval()
    with torch.no_grad():
        out = net(_pattern())
    assert sorted(out) == sorted(V2_REFERENCE)  # no type output
    for k, ref in V2_REFERENCE.items():
        v = out[k]
        got = [float(v.sum()), float(v.abs().sum()), float(v.flatten()[::997].sum())]
        assert got == pytest.approx(ref, rel=1e-12, abs=1e-9), k


def test_type_channels_leave_every_existing_output_bit_identical():
    lm = load_model(V2)
    cfg = ModelConfig.from_dict(dict(lm.card["architecture"], infection_types=TYPES))
    typed = MultiTaskNet(cfg).eval()
    missing, unexpected = typed.load_state_dict(lm.model.state_dict(), strict=False)
    assert sorted(missing) == ["seg_decoder.type_out.bias", "seg_decoder.type_out.weight"] and not unexpected
    x = _pattern().float()
    with torch.no_grad():
        a, b = lm.model.float().eval()(x), typed(x)
    assert set(b) - set(a) == {"type_logits"}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert b["type_logits"].shape == (2, 2, 256, 256)


def test_type_model_round_trips_through_its_folder(tmp_path):
    cfg = ModelConfig(input_size=64, infection_types=TYPES)
    folder = save_model_folder(MultiTaskNet(cfg), cfg, {"id": "typed"}, tmp_path / "m",
                               representation=Representation(input_size=64))
    lm = load_model(folder)
    assert lm.config.infection_types == INFECTION_TYPES
    assert lm.card["architecture"]["infection_types"] == TYPES
    with torch.no_grad():
        out = lm.model(torch.rand(3, 1, 64, 64), tasks=["segmentation"])
    assert out["seg_logits"].shape == (3, 2, 64, 64) and out["type_logits"].shape == (3, 2, 64, 64)
    q = infection_type_probabilities(out["seg_logits"], out["type_logits"], lm.config)
    assert torch.allclose(q.sum(dim=1), torch.sigmoid(out["seg_logits"][:, 0]), atol=1e-6)


def test_type_masks_are_disjoint_and_their_union_is_the_infection():
    rng = np.random.default_rng(0)
    p = rng.random((5, 7))
    q = rng.random((2, 5, 7))
    m = infection_type_masks(p, q)
    assert m.shape == (2, 5, 7)
    assert not (m[0] & m[1]).any()
    assert np.array_equal(m[0] | m[1], p >= 0.5)
    assert np.array_equal(m[0], (p >= 0.5) & (q[0] >= q[1]))


@pytest.mark.parametrize("bad", [dict(infection_types=["consolidation", "ground-glass opacity"]),
                                 dict(infection_types=TYPES, lesion_types=["nodule-mass"]),
                                 dict(infection_types=TYPES, tasks=["classification"])])
def test_type_option_refuses_what_no_data_or_head_supports(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)


# --------------------------------------------------------------------------- loss

def _batch(n=2, s=16):
    """Sample 0: multi-class (GGO left half of a square, consolidation right half);
    sample 1: binary only (the same square infected, type channels empty)."""
    masks = torch.zeros(n, 4, s, s)
    masks[:, 0, 4:12, 4:12] = 1.0
    masks[0, 2, 4:12, 4:8] = 1.0
    masks[0, 3, 4:12, 8:12] = 1.0
    present = torch.tensor([[True, True, False, False]] * n)
    return {"masks": masks, "present": present, "weight": torch.ones(n), "image": torch.zeros(n, 1, s, s),
            "cls": torch.full((n,), -1), "hm": torch.zeros(n, 4, s // 4, s // 4),
            "size": torch.zeros(n, 2, s // 4, s // 4), "off": torch.zeros(n, 2, s // 4, s // 4),
            "reg": torch.zeros(n, s // 4, s // 4)}


def _outputs(n=2, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    seg = torch.randn(n, 2, s, s, generator=g).requires_grad_()
    typ = torch.randn(n, 2, s, s, generator=g).requires_grad_()
    return seg, typ


def test_binary_only_samples_give_the_split_zero_gradient():
    loss = MultiTaskLoss({"segmentation": "dice", "seg_bce_weight": 0.5})
    batch = _batch()
    seg, typ = _outputs()
    total, parts = loss({"seg_logits": seg, "type_logits": typ}, batch, ["segmentation"])
    total.backward()
    assert torch.count_nonzero(typ.grad[1]) == 0  # the binary sample: exactly zero
    assert torch.count_nonzero(typ.grad[0]) > 0  # the multi-class sample moves the split
    assert torch.count_nonzero(seg.grad[1, 0]) > 0  # ... while its union still supervises infection

    only_binary = _batch()
    only_binary["masks"][:, 2:] = 0.0
    seg, typ = _outputs(seed=1)
    with_types, _ = loss({"seg_logits": seg, "type_logits": typ}, only_binary, ["segmentation"])
    without, _ = loss({"seg_logits": seg}, only_binary, ["segmentation"])
    assert float(with_types.detach()) == float(without.detach())  # no type term at all
    with_types.backward()
    assert typ.grad is None  # not even in the graph


def test_type_loss_known_answer():
    """P(infection) = 1 and an even split: each type's P is 0.5 on all 256 pixels, so with 32
    labelled pixels per type Dice = 1 - (2*16 + 1) / (128 + 32 + 1) and CE = ln 2."""
    loss = MultiTaskLoss({"segmentation": "dice"})
    batch = _batch(n=1)
    seg = torch.full((1, 2, 16, 16), 40.0)
    typ = torch.zeros(1, 2, 16, 16)
    lt = loss.infection_types(seg, typ, batch["masks"][:, 2:], batch["masks"][:, 0], batch["weight"], 0)
    expected = 1.0 - 33.0 / 161.0 + math.log(2.0)
    assert float(lt) == pytest.approx(expected, rel=1e-6)
    right = torch.zeros(1, 2, 16, 16)
    right[0, 0] = torch.where(batch["masks"][0, 2] > 0, 20.0, -20.0)
    assert float(loss.infection_types(seg, right, batch["masks"][:, 2:], batch["masks"][:, 0],
                                      batch["weight"], 0)) < 0.5 * expected


def test_detection_reads_the_lesion_channels_only():
    """Type channels after the lesion channels do not change (or break) the detection loss."""
    loss = MultiTaskLoss()
    batch = _batch()
    batch["hm"][:, 2:] = 1.0  # whatever a type channel might hold is ignored
    g = torch.Generator().manual_seed(3)
    out = {"det_heatmap": torch.randn(2, 2, 4, 4, generator=g), "det_size": torch.zeros(2, 2, 4, 4),
           "det_offset": torch.zeros(2, 2, 4, 4)}
    a, _ = loss(out, batch, ["detection"])
    batch["hm"], batch["present"] = batch["hm"][:, :2], batch["present"][:, :2]
    b, _ = loss(out, batch, ["detection"])
    assert float(a) == float(b)


# --------------------------------------------------------------------------- data

def _v3_spec(name):
    return dict(next(s for s in load_config("v3_sources")["sources"] if s["name"] == name))


def test_multiclass_split_keeps_every_slice_on_the_doctor_side(data_dir):
    from ChestCTMTLTraining.sources import load_source, with_type_channels

    rep = Representation(input_size=64)
    doctor, multi = _v3_spec("covid-doctor"), _v3_spec("covid-multiclass")
    stems = {}
    for split in ("train", "val"):
        d = load_source(doctor, split, rep, data_dir)
        m = load_source(multi, split, rep, data_dir)
        stems[split] = {i.split("/")[-1].rsplit(".", 1)[0] for i in m.ids}
        assert stems[split] == {i.split("/")[-1].rsplit(".", 1)[0] for i in d.ids}
        assert m.masks.shape[1] == 4 and d.masks.shape[1] == 2
        assert m.mask_present[:, :2].all() and not m.mask_present[:, 2:].any()
        union = m.masks[:, 2].astype(int) + m.masks[:, 3]
        assert np.abs(union - m.masks[:, 0].astype(int)).max() <= 2  # types partition the infection
        assert (m.masks[:, 2] >= 128).any() and (m.masks[:, 3] >= 128).any()
        padded = with_type_channels([d, m])
        assert padded[0].masks.shape[1] == 4 and not padded[0].masks[:, 2:].any()
        assert not padded[0].mask_present[:, 2:].any()
    assert len(stems["val"]) == 10 and len(stems["train"]) == 40
    assert not stems["train"] & stems["val"]


def _folder(root, name, stems, label_value=1):
    for sub in ("Imgs", "GT"):
        (root / name / sub).mkdir(parents=True)
    for st in stems:
        Image.fromarray(np.full((40, 30), 100, np.uint8)).save(root / name / "Imgs" / ("%s.jpg" % st))
        gt = np.zeros((40, 30), np.uint8)
        gt[10:20, 5:15] = label_value
        gt[20:30, 5:15] = 2 if label_value == 1 else label_value
        im = Image.fromarray(gt, mode="L").convert("P") if label_value == 1 else Image.fromarray(gt)
        im.save(root / name / "GT" / ("%s.png" % st))


def test_split_follows_the_pair_folder_even_when_the_folders_differ(tmp_path):
    """The multi-class folder has slices the doctor folder lacks: the doctor slices keep the
    doctor source's split, the extra ones are split among themselves."""
    from ChestCTMTLTraining.sources import load_source

    _folder(tmp_path, "doctor", [str(i) for i in range(10)], label_value=255)
    _folder(tmp_path, "multi", [str(i) for i in range(10)] + ["20", "21", "22", "23", "24"])
    rep, rule = Representation(input_size=32), {"mode": "last_fraction", "fraction": 0.2}
    doc = {"type": "covid_semiseg", "path": "doctor", "kind": "doctor", "holdout": rule}
    multi = {"type": "covid_semiseg_types", "path": "multi", "pair": "doctor", "holdout": rule}
    val_d = {i.split("/")[-1][:-4] for i in load_source(doc, "val", rep, tmp_path).ids}
    val_m = {i.split("/")[-1][:-4] for i in load_source(multi, "val", rep, tmp_path).ids}
    assert val_d == {"8", "9"} and val_m == {"8", "9", "24"}
    m = load_source(multi, "train", rep, tmp_path)
    assert len(m) == 12 and not m.skipped


def test_label_map_with_unknown_label_is_skipped_with_the_reason(tmp_path):
    from ChestCTMTLTraining.sources import load_source

    _folder(tmp_path, "multi", ["0", "1"])
    Image.fromarray(np.full((40, 30), 3, np.uint8), mode="L").save(tmp_path / "multi" / "GT" / "1.png")
    s = load_source({"type": "covid_semiseg_types", "path": "multi"}, "train",
                    Representation(input_size=32), tmp_path)
    assert len(s) == 1 and len(s.skipped) == 1 and "label 3" in s.skipped[0]


# --------------------------------------------------------------------------- predict / evaluate

def _biased_model_folder(path, types: bool):
    """A tiny model whose infection channel is on almost everywhere and whose type head splits
    by a fixed random pattern, so both types appear."""
    cfg = ModelConfig(input_size=64, infection_types=TYPES if types else ())
    torch.manual_seed(0)
    net = MultiTaskNet(cfg)
    with torch.no_grad():
        net.seg_decoder.out.bias[:] = torch.tensor([6.0, -20.0])
        if types:  # centre the types' logit difference on a noise image: both types appear
            net.eval()
            diff = net(torch.rand(1, 1, 64, 64), tasks=["segmentation"])["type_logits"].diff(dim=1)
            net.seg_decoder.type_out.bias[1] -= float(diff.median())
    return save_model_folder(net, cfg, {"id": "biased"}, path, representation=Representation(input_size=64))


def _slices(folder):
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (70, 90), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (33, 50, 3), dtype=np.uint8)).save(folder / "b.jpg")
    return {"a": (70, 90), "b": (33, 50)}


def test_predict_writes_lesion_ggo_and_consolidation_pngs(tmp_path):
    from ChestCTMTLTraining.predict import predict_images

    sizes = _slices(tmp_path / "in")
    model = _biased_model_folder(tmp_path / "m", types=True)
    assert predict_images([tmp_path / "in"], tmp_path / "out", model=str(model), progress=False) == (2, 0)
    seen = set()
    for stem, shape in sizes.items():
        png = {k: np.asarray(Image.open(tmp_path / "out" / ("%s_%s.png" % (stem, k))))
               for k in ("lesion", "ggo", "consolidation")}
        for k, a in png.items():
            assert a.shape == shape and a.dtype == np.uint8 and set(np.unique(a)) <= {0, 255}, (stem, k)
            seen |= {k} if a.any() else set()
        assert not ((png["ggo"] > 0) & (png["consolidation"] > 0)).any()
        assert np.array_equal((png["ggo"] > 0) | (png["consolidation"] > 0), png["lesion"] > 0)
    assert seen == {"lesion", "ggo", "consolidation"}
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_predict_without_type_channels_writes_only_the_lesion_png(tmp_path):
    from ChestCTMTLTraining.predict import predict_images

    _slices(tmp_path / "in")
    model = _biased_model_folder(tmp_path / "m", types=False)
    predict_images([tmp_path / "in"], tmp_path / "out", model=str(model), progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_lesion.png", "b_lesion.png", "predictions.csv"]


def test_evaluation_reports_type_dice_on_held_out_multiclass_slices(tmp_path, data_dir):
    import yaml

    from ChestCTMTLTraining.evaluate import evaluate_model

    cfg = {"data_root": str(data_dir), "model": {"input_size": 64}, "sources": [_v3_spec("covid-multiclass")]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    model = _biased_model_folder(tmp_path / "m", types=True)
    m = evaluate_model(str(model), str(tmp_path / "c.yaml"), tmp_path / "eval", probe_format=False)
    types = m["infection_types"]["types"]
    assert set(types) == set(TYPES) and m["infection_types"]["grid"] == "original"
    assert types["ground-glass opacity"]["slices"] == 10 and types["ground-glass opacity"]["n"] >= 8
    for t in TYPES:
        assert 0.0 < types[t]["dice"] < 1.0 and 0.0 < types[t]["dice_pooled"] < 1.0
    assert m["headline"]["ggo_dice"] == types["ground-glass opacity"]["dice"]
    assert "consolidation_dice" in m["headline"]
    assert "Infection types" in (tmp_path / "eval" / "report.md").read_text()


def test_every_infection_type_has_its_terminology_entry():
    """Segments named after the model's types get codes and colours from the context file:
    ground-glass opacity DCM 112120 (DICOM CID 6104 "Abnormal Opacity Finding or Feature"),
    consolidation SCT 95436008 "Lung consolidation"."""
    from ChestCTMTLMRML import terminology

    codes = {"ground-glass opacity": "DCM^112120^Ground glass opacity",
             "consolidation": "SCT^95436008^Lung consolidation"}
    for name in INFECTION_TYPES:
        term = terminology.lesion_term(name)
        assert term.entry is not None and codes[name] in term.entry, name
        assert term.color != terminology.lesion_term("not-a-type").color


def test_v3_recipe_builds_a_model_with_infection_types_and_default_does_not():
    from ChestCTMTLTraining.train import model_config_of

    assert model_config_of(load_config("v3_sources")).infection_types == INFECTION_TYPES
    assert model_config_of(load_config("default")).infection_types == ()


def test_pack_keeps_the_type_labels_and_the_split(tmp_path):
    """A pack made of the multi-class and doctor folders serves the same padded sets, and the
    original label map (for the type Dice) travels in it."""
    from ChestCTMTLTraining.loading import load_split
    from ChestCTMTLTraining.pack import write_pack
    from ChestCTMTLTraining.sources.base import read_gt_labels

    _folder(tmp_path, "doctor", [str(i) for i in range(5)], label_value=255)
    _folder(tmp_path, "multi", [str(i) for i in range(5)])
    rule = {"mode": "last_fraction", "fraction": 0.2}
    cfg = {"data_root": str(tmp_path), "model": {"input_size": 32}, "representation": {},
           "sources": [{"name": "d", "type": "covid_semiseg", "path": "doctor", "kind": "doctor", "holdout": rule},
                       {"name": "m", "type": "covid_semiseg_types", "path": "multi", "pair": "doctor",
                        "holdout": rule}]}
    pack = write_pack(cfg, tmp_path / "p.npz")
    direct = load_split(cfg, "val", Representation(input_size=32))
    packed = load_split(dict(cfg, data_pack=str(pack)), "val", Representation(input_size=32))
    assert [s.name for s in packed] == ["d", "m"] and all(s.masks.shape[1] == 4 for s in packed)
    for a, b in zip(direct, packed):
        assert a.ids == b.ids and np.array_equal(a.masks, b.masks)
        assert np.array_equal(a.mask_present, b.mask_present)
    labels = read_gt_labels(packed[1].meta[0])
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2}
