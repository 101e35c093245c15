"""Copy-paste augmentation and hard negatives: known answers on phantoms, then the real data.

A paste must land in the host's lungs, its box must be its mask's, pixels beyond the blend
margin must not change, VOIs of validation patients must never be donors, draws must repeat
with a seed, and a config without the new sections must give the batches it gave before.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ChestCTMTLLib.representation import Representation
from ChestCTMTLLib.results import CLASS_NAMES, LESION_TYPES

NOD = LESION_TYPES.index("nodule-mass")
NONCOVID = CLASS_NAMES.index("non-covid")
S = 128
T = len(LESION_TYPES)


# --------------------------------------------------------------------------- phantoms

def ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def phantom(seed=0, size=S):
    """A unit 'CT' slice in the HU representation: air 0, body 0.8, two lungs 0.12 with a few
    vessels (0.6), a table below the body. Returns (image, true lung mask)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.float32)
    img[ellipse(img.shape, 0.48 * size, 0.5 * size, 0.36 * size, 0.46 * size)] = 0.8
    lungs = ellipse(img.shape, 0.46 * size, 0.29 * size, 0.26 * size, 0.16 * size) | \
        ellipse(img.shape, 0.46 * size, 0.71 * size, 0.26 * size, 0.16 * size)
    img[lungs] = 0.12
    for _ in range(6):
        cy, cx = rng.uniform(0.3, 0.6) * size, rng.choice([0.27, 0.73]) * size + rng.uniform(-5, 5)
        img[ellipse(img.shape, cy, cx, 1.5, 1.5) & lungs] = 0.6
    img[int(0.9 * size):int(0.9 * size) + 2, :] = 0.9  # the table's two edges, air between
    img[int(0.95 * size):int(0.95 * size) + 2, :] = 0.9
    img += rng.normal(0, 0.005, img.shape).astype(np.float32)
    return np.clip(img, 0, 1), lungs


def host_set(n=4, split="train", spacing=True, name="hosts"):
    from ChestCTMTLTraining.sources.base import SampleSet

    imgs = np.stack([phantom(k)[0] for k in range(n)]).astype(np.float16)
    meta = [{"scan": "ph", "k": k, "spacing": [0.7, 0.7, 2.0] if spacing else None,
             "geometry": {"side": 2 * S, "input_size": S}} for k in range(n)]
    if not spacing:
        meta = [{"image": "ph%d.png" % k} for k in range(n)]
    return SampleSet(name, split, imgs, np.full(n, NONCOVID, np.int64), np.zeros((n, T, S, S), np.uint8),
                     np.ones((n, T), bool), np.ones(n, np.float32), ["%s%d" % (name, k) for k in range(n)],
                     meta=meta)


def donor_set(split="train", patients=("P1", "P2", "P3"), radius=16, mm_per_pixel=0.35):
    """VOI-like patches (64 px): a bright disk of ``radius`` px on lung background."""
    from ChestCTMTLTraining.sources.base import SampleSet

    n = len(patients)
    disk = ellipse((64, 64), 31.5, 31.5, radius, radius)
    x = np.where(disk, 0.85, 0.12).astype(np.float16)
    imgs = np.stack([x] * n)
    masks = np.zeros((n, T, 64, 64), np.uint8)
    masks[:, NOD][:, disk] = 255
    meta = [{"patient": p, "nodule": "%s_R_1" % p, "diameter_mm": 2 * radius * mm_per_pixel,
             "mm_per_pixel": mm_per_pixel} for p in patients]
    return SampleSet("vois", split, imgs, np.full(n, -1, np.int64), masks, np.ones((n, T), bool),
                     np.ones(n, np.float32), ["vois#%s" % p for p in patients], kind="patch", meta=meta)


def cp_config(**kw):
    from ChestCTMTLTraining.copy_paste import CopyPasteConfig

    d = {"enabled": True, "p": 0.3, "donors": "vois", "hosts": [{"source": "hosts"}], "diameter_mm": [1, 40]}
    d.update(kw)
    return CopyPasteConfig.from_dict(d)


HU = (-1000.0, 200.0)


# --------------------------------------------------------------------------- lungs of a 2D slice

def test_slice_lungs_finds_the_phantom_lungs_and_not_the_table():
    from ChestCTMTLTraining.slice_lungs import slice_lungs

    img, truth = phantom()
    got = slice_lungs(img).mask
    iou = (got & truth).sum() / (got | truth).sum()
    assert iou > 0.93, iou
    assert not got[int(0.9 * S):].any()  # the air between the table's edges is not lung
    assert not got[:3].any() and not got[:, :3].any()  # nor the air around the patient


def test_slice_lungs_of_a_lung_cropped_slice_touching_one_side():
    """SARS-CoV-2 slices are cropped to the lungs: a lung may reach the image edge."""
    from ChestCTMTLTraining.slice_lungs import slice_lungs

    img, truth = phantom()
    crop, t = np.ascontiguousarray(img[10:110, 25:116]), truth[10:110, 25:116]
    assert t[:, 0].any() and not t[0, 0]  # the right lung reaches the left edge; air in the corner
    got = slice_lungs(crop).mask
    assert (got & t).sum() / (got | t).sum() > 0.9


# --------------------------------------------------------------------------- one paste

def paste_once(seed=0, factor=0.5, hu_host=True, blend=3.0):
    from ChestCTMTLTraining.copy_paste import paste_nodule
    from ChestCTMTLTraining.slice_lungs import slice_lungs

    host, _ = phantom()
    lungs = slice_lungs(host)
    d = donor_set()
    img = host.copy()
    got = paste_nodule(img, lungs.mask.copy(), lungs, d.images[0].astype(np.float32), d.masks[0, NOD],
                       factor, np.random.default_rng(seed), hu_host=hu_host, hu_window=HU, blend_px=blend)
    return host, img, lungs, got


def test_paste_lies_in_the_lungs_and_its_box_is_its_masks():
    from ChestCTMTLTraining.batching import boxes_from_mask

    host, img, lungs, got = paste_once()
    assert got is not None
    assert got.mask.any() and not (got.footprint & ~lungs.mask).any()  # blend margin included
    assert (got.mask <= got.footprint).all()
    rows, cols = np.nonzero(got.mask)
    assert got.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    assert boxes_from_mask(got.mask.astype(np.float32)) == [got.box]


def test_pixels_beyond_the_blend_margin_are_unchanged():
    host, img, lungs, got = paste_once()
    from scipy import ndimage

    assert np.array_equal(img[~got.footprint], host[~got.footprint])
    assert not np.array_equal(img[got.mask], host[got.mask])
    # the margin is 3 px: nothing farther than that from the nodule changed
    far = ndimage.distance_transform_edt(~got.mask) > 3.0
    assert np.array_equal(img[far], host[far])
    # blended, not cut: the margin holds values between host and nodule
    ring = got.footprint & ~got.mask
    assert ring.any()


def test_paste_scales_by_physical_size():
    """Donor disk radius 16 px at 0.35 mm/px on a host of 0.7 mm/px: radius 8 px (area ~201)."""
    _h, _i, _l, got = paste_once(factor=0.35 / 0.7)
    area = got.mask.sum()
    assert 0.8 * np.pi * 64 < area < 1.2 * np.pi * 64, area


def test_hu_host_gets_the_voi_values_and_8bit_host_its_own_levels():
    from ChestCTMTLTraining.copy_paste import map_intensity
    from ChestCTMTLTraining.slice_lungs import SliceLungs

    host, img, lungs, got = paste_once(factor=1.0)
    from scipy import ndimage

    core = ndimage.binary_erosion(got.mask, iterations=3)
    assert abs(float(img[core].mean()) - 0.85) < 0.02  # the VOI's own value on an HU host
    fake = SliceLungs(np.ones((4, 4), bool), lung_level=0.0, tissue_level=0.5, threshold=0.25, noise=0.0)
    lung_u, tissue_u = (-850 + 1000) / 1200.0, (40 + 1000) / 1200.0
    out = map_intensity(np.array([lung_u, tissue_u, 0.0]), fake, HU)
    assert np.allclose(out, [0.0, 0.5, 0.0], atol=1e-6)  # lung -> host lung, tissue -> host tissue, clipped


# --------------------------------------------------------------------------- donors and hosts

def test_validation_voi_sets_are_refused_as_donors():
    from ChestCTMTLTraining.copy_paste import CopyPaste

    with pytest.raises(ValueError, match="training split"):
        CopyPaste(cp_config(), [host_set(), donor_set(split="val")], HU)
    with pytest.raises(ValueError, match="training split"):
        CopyPaste(cp_config(), [host_set(split="val"), donor_set()], HU)


def test_8bit_hosts_need_a_pixel_size_and_config_keys_are_checked():
    from ChestCTMTLTraining.copy_paste import CopyPaste, CopyPasteConfig

    with pytest.raises(ValueError, match="mm_per_pixel"):
        CopyPaste(cp_config(), [host_set(spacing=False), donor_set()], HU)
    CopyPaste(cp_config(hosts=[{"source": "hosts", "mm_per_pixel": 1.2}]), [host_set(spacing=False), donor_set()], HU)
    with pytest.raises(ValueError, match="unknown keys"):
        CopyPasteConfig.from_dict({"enabled": True, "probability": 0.2})
    with pytest.raises(ValueError, match="no hosts"):
        CopyPasteConfig.from_dict({"enabled": True})


def test_draw_is_deterministic_and_class_free():
    from ChestCTMTLTraining.copy_paste import CopyPaste

    cp = CopyPaste(cp_config(max_nodules=2), [host_set(), donor_set()], HU)
    a, b = cp.draw(np.random.default_rng(7)), cp.draw(np.random.default_rng(7))
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["masks"], b["masks"])
    assert a["pastes"] and a["cls"] == -1 and a["present"][NOD]
    assert np.array_equal(a["masks"][NOD] > 0, np.any([p.mask for p in a["pastes"]], axis=0))
    c = cp.draw(np.random.default_rng(8))
    assert not np.array_equal(a["image"], c["image"])


def test_hosts_are_drawn_by_source_weight_not_by_slice_count():
    from ChestCTMTLTraining.copy_paste import CopyPaste

    few, many = host_set(1, name="few"), host_set(9, name="many")
    cp = CopyPaste(cp_config(hosts=[{"source": "few", "weight": 1.0}, {"source": "many", "weight": 3.0}]),
                   [few, many, donor_set()], HU)
    rng = np.random.default_rng(0)
    drawn = [cp.draw(rng)["host"][0] for _ in range(200)]
    assert 0.15 < drawn.count("few") / 200 < 0.35  # 1 / (1 + 3), not 1 / 10


def test_configs_switch_generators_on_only_in_v3_and_refuse_unknown_keys():
    from ChestCTMTLTraining.config import load_config

    v3, default = load_config("v3_sources"), load_config("default")
    assert v3["copy_paste"]["enabled"] and v3["hard_negatives"]["enabled"]
    assert "copy_paste" not in default and "hard_negatives" not in default
    with pytest.raises(ValueError, match="unknown keys"):
        load_config("v3_sources", {"copy_paste": {"hostz": []}})
    with pytest.raises(ValueError, match="unknown keys"):
        load_config("v3_sources", {"hard_negatives": {"share": 0.2}})


# --------------------------------------------------------------------------- in the batches

def mixed_sampler(extras=()):
    from ChestCTMTLTraining.batching import MixedSampler
    from ChestCTMTLTraining.sources.base import SampleSet

    hosts = host_set(6)
    d = donor_set(patients=tuple("P%d" % k for k in range(9)))
    aug = {"enabled": True, "flip_lr": 0.5, "rot90": 0.25, "affine_p": 0.8, "intensity_p": 0.8,
           "resample_p": 0.3, "noise_p": 0.3}
    return MixedSampler([hosts, d], [1.0, 1.0], S, len(CLASS_NAMES), aug, seed=3, extras=extras), [hosts, d]


def fingerprint(batch):
    return {"cls": batch["cls"].tolist(), "present": batch["present"].tolist(),
            "image": round(float(batch["image"].double().sum()), 2),
            "masks": round(float(batch["masks"].double().sum()), 2),
            "hm": round(float(batch["hm"].double().sum()), 2)}


# Computed with the batching.py of commit 64df460 (before copy-paste existed) on these phantoms.
BEFORE = [
    {"cls": [0, -1, 0, 0], "image": 5084.83, "masks": 758.97, "hm": 5.23},
    {"cls": [-1, 0, 0, 0], "image": 4918.77, "masks": 545.62, "hm": 4.62},
    {"cls": [-1, 0, 0, 0], "image": 6213.45, "masks": 564.02, "hm": 5.23},
]


def test_without_generators_the_batches_are_unchanged():
    from ChestCTMTLTraining.copy_paste import generated_sources

    sampler, sets = mixed_sampler()
    assert generated_sources({"copy_paste": {"enabled": False}}, sets, HU) == []
    assert generated_sources({}, sets, HU) == []
    got = [fingerprint(sampler.batch(step, 4, 64)) for step in range(3)]
    for g, b in zip(got, BEFORE):
        assert g["cls"] == b["cls"] and all(all(p) for p in g["present"])
        for k in ("image", "masks", "hm"):
            assert g[k] == pytest.approx(b[k], rel=1e-4, abs=0.05), k


def test_sampler_draws_pasted_and_hard_negative_samples():
    from ChestCTMTLTraining.copy_paste import CopyPaste
    from ChestCTMTLTraining.hard_negatives import HardNegativeConfig, HardNegatives

    _s, sets = mixed_sampler()
    cp = CopyPaste(cp_config(p=0.5), sets, HU)
    hn = HardNegatives(HardNegativeConfig.from_dict({"enabled": True, "p": 0.4, "sources": ["hosts"]}), sets, HU)
    sampler, _ = mixed_sampler([cp, hn])
    assert len(sampler.p) == 4 and sampler.p.sum() == pytest.approx(1.0)
    a, b = sampler.batch(5, 12, 64), sampler.batch(5, 12, 64)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert a["image"].shape == (12, 1, 64, 64) and a["masks"].shape == (12, T, 64, 64)
    assert (a["cls"] == -1).any()  # pasted (or VOI mosaic) samples carry no class


# --------------------------------------------------------------------------- hard negatives

def test_hard_negative_regions_follow_their_rules():
    from ChestCTMTLTraining.hard_negatives import regions

    img, lungs = phantom()
    reg = regions(img, HU)
    assert reg["vessel"].any() and (img[reg["vessel"]] >= 0.4).all()
    assert not (reg["vessel"] & ~reg["lung"]).any()
    cols = np.nonzero(reg["mediastinum"])[1]
    assert cols.size and ((np.abs(cols - S / 2) < 0.22 * S)).all()  # medial edges only


def test_hard_negative_bases_are_the_lowest_slices_and_crops_hold_the_focus():
    from ChestCTMTLTraining.hard_negatives import HardNegativeConfig, HardNegatives

    hosts = host_set(10)
    hn = HardNegatives(HardNegativeConfig.from_dict({"enabled": True, "sources": ["hosts"]}), [hosts], HU)
    assert sorted(i for _s, i, _p in hn.pool["base"]) == [0, 1]  # 15 % of 10 slices: k 0 and 1
    rng = np.random.default_rng(0)
    for _ in range(20):
        d = hn.draw(rng)
        assert d["cls"] == NONCOVID and not d["masks"].any() and d["present"].all()
        r, c = d["focus"]
        assert 0 <= r < S and 0 <= c < S


def test_focus_follows_the_augmentation_into_the_crop():
    from ChestCTMTLTraining.batching import augment, focus_crop, focus_map

    img = torch.zeros(1, S, S)
    img[0, 20, 100] = 1.0  # a marker at the focus
    fmap = focus_map((20, 100), S)[None]
    rng = np.random.default_rng(0)
    aug = {"enabled": True, "flip_lr": 1.0, "rot90": 0.0, "affine_p": 0.0, "intensity_p": 0.0,
           "resample_p": 0.0, "noise_p": 0.0}
    out, both = augment(img, torch.cat([torch.zeros(T, S, S), fmap]), rng, aug)
    crop, _m = focus_crop(out, both[:-1], both[-1], 32, rng)
    assert float(crop.max()) == 1.0  # the flipped marker is inside the 32-px window


# --------------------------------------------------------------------------- the real data

@pytest.fixture(scope="module")
def real_sets(data_dir):
    from ChestCTMTLTraining.config import load_config
    from ChestCTMTLTraining.sources import load_source

    cfg = load_config("v3_sources")
    rep = Representation(input_size=256)
    specs = {s["name"]: s for s in cfg["sources"]}
    for need in ("lidc_nodule_vois", "covid_ct_md", "iq_othnccd"):
        if not (data_dir / need).exists():
            pytest.skip("real data %s is absent (see ../shared/data/README.md)" % (data_dir / need))
    train = [load_source(specs[n], "train", rep, data_dir) for n in ("lidc-vois", "covid-ct-md", "iq-othnccd")]
    val_vois = load_source(specs["lidc-vois"], "val", rep, data_dir)
    return cfg, train, val_vois


def test_no_validation_patient_can_be_pasted(real_sets):
    from ChestCTMTLTraining.copy_paste import CopyPaste, CopyPasteConfig

    cfg, train, val_vois = real_sets
    cp = CopyPaste(CopyPasteConfig.from_dict(dict(cfg["copy_paste"], hosts=[{"source": "covid-ct-md"}])),
                   train, HU)
    val_patients = {m["patient"] for m in val_vois.meta}
    donor_patients = {cp.donor.meta[k]["patient"] for k in cp.donors}
    assert val_patients and len(donor_patients) > 400
    assert not donor_patients & val_patients
    rng = np.random.default_rng(0)
    used = {cp.donor.meta[p.donor]["patient"] for _ in range(40) for p in cp.draw(rng)["pastes"]}
    assert used and not used & val_patients


@pytest.mark.parametrize("host", ["covid-ct-md", "iq-othnccd"])
def test_real_pastes_stay_in_the_lungs_with_matching_boxes(real_sets, host):
    from ChestCTMTLTraining.batching import boxes_from_mask
    from ChestCTMTLTraining.copy_paste import CopyPaste, CopyPasteConfig

    cfg, train, _v = real_sets
    spec = next(h for h in cfg["copy_paste"]["hosts"] if h["source"] == host)
    cp = CopyPaste(CopyPasteConfig.from_dict(dict(cfg["copy_paste"], hosts=[spec])), train, HU)
    rng = np.random.default_rng(1)
    n = 0
    for _ in range(12):
        d = cp.draw(rng)
        s, i = d["host"]
        before = next(x for x in train if x.name == s).images[i].astype(np.float32)
        foot = np.zeros(before.shape, bool)
        for p in d["pastes"]:
            assert not (p.footprint & ~d["lungs"].mask).any()
            foot |= p.footprint
            n += 1
        assert np.array_equal(d["image"][~foot], before[~foot])
        if d["pastes"]:
            boxes = boxes_from_mask(d["masks"][NOD])
            assert sorted(boxes) == sorted(p.box for p in d["pastes"] if p.mask.sum() >= 6)
    assert n >= 8


def test_slice_lungs_in_a_soft_tissue_window_where_fat_joins_lungs_to_the_air_outside():
    """IQ-OTH-like: lungs, fat and air black; speckled dim tissue; bright bones. A black fat
    channel links each lung to the outside air, which the opening must cut."""
    from ChestCTMTLTraining.slice_lungs import slice_lungs

    rng = np.random.default_rng(0)
    img = np.zeros((S, S), np.float32)
    body = ellipse(img.shape, 0.5 * S, 0.5 * S, 0.36 * S, 0.46 * S)
    img[body] = np.where(rng.random(body.sum()) < 0.6, 0.35, 0.0)  # speckled soft tissue
    img[body & ~ellipse(img.shape, 0.5 * S, 0.5 * S, 0.33 * S, 0.43 * S)] = 0.95  # ribs as a ring
    lungs = ellipse(img.shape, 0.48 * S, 0.29 * S, 0.24 * S, 0.15 * S) | \
        ellipse(img.shape, 0.48 * S, 0.71 * S, 0.24 * S, 0.15 * S)
    img[lungs] = 0.0
    for c in (int(0.25 * S), int(0.75 * S)):  # fat channels through the wall, 8 px wide
        img[:int(0.3 * S), c - 4:c + 4] = 0.0
    got = slice_lungs(img)
    assert (got.mask & lungs).sum() / (got.mask | lungs).sum() > 0.85
    assert not got.mask[:int(0.12 * S)].any()  # the air above the patient stays out


def test_slice_lungs_joined_around_the_heart_do_not_swallow_it():
    from ChestCTMTLTraining.slice_lungs import slice_lungs

    img, lungs = phantom()
    bridge = np.zeros_like(lungs)
    bridge[int(0.24 * S):int(0.28 * S), int(0.3 * S):int(0.7 * S)] = True  # anterior junction
    bridge[int(0.64 * S):int(0.68 * S), int(0.3 * S):int(0.7 * S)] = True  # posterior junction
    img[bridge] = 0.12
    heart = np.zeros_like(lungs)
    heart[int(0.32 * S):int(0.6 * S), int(0.47 * S):int(0.53 * S)] = True
    assert not (heart & (lungs | bridge)).any()
    got = slice_lungs(img).mask
    assert got[bridge].mean() > 0.9 and not got[heart].any()


def test_real_hard_negatives_are_normal_and_follow_their_rules(real_sets):
    from ChestCTMTLTraining.hard_negatives import HardNegativeConfig, HardNegatives

    _cfg, train, _v = real_sets
    hn = HardNegatives(HardNegativeConfig.from_dict({"enabled": True, "sources": ["covid-ct-md"]}), train, HU)
    assert hn.rules == ["vessel", "mediastinum", "base"]
    scans = {s.meta[i]["scan"] for r in hn.rules for s, i, _p in hn.pool[r]}
    assert scans == {"normal_normal001"}  # the COVID-19 scan's slices are never negatives
    ks = sorted(s.meta[i]["array_k"] for s, i, _p in hn.pool["vessel"])
    base = [s.meta[i]["array_k"] for s, i, _p in hn.pool["base"]]
    assert max(base) <= np.percentile(ks, 20)  # the feet end of the lungs (LPS arrays)
    for s, i, pts in hn.pool["vessel"][::20]:
        assert (s.images[i][pts[:, 0], pts[:, 1]].astype(np.float32) >= (1000 - 500) / 1200 - 1e-3).all()
