"""The v3 sources on the real data: SARS-CoV-2 CT slices, COVID-CT-MD whole CTs, LIDC nodule
VOIs. Records have the model's shape and the right labels, class counts are the data README's,
no patient / scan / near-duplicate neighbour crosses a split, and a pack round-trips them."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ChestCTMTLLib.representation import Representation
from ChestCTMTLLib.results import CLASS_NAMES, LESION_TYPES

REP = Representation(input_size=64)
COVID, NONCOVID, CANCER = (CLASS_NAMES.index(c) for c in ("covid", "non-covid", "cancer"))
NOD = LESION_TYPES.index("nodule-mass")
SARS_HOLD = {"mode": "contiguous", "fraction": 0.2, "search": 20, "purge": 0.95}
README_SARS = {"covid": 1250, "non-covid": 1229}


def _need(path):
    if not path.exists():
        pytest.skip("real data %s is absent (see ../shared/data/README.md)" % path)
    return path


# --------------------------------------------------------------------------- SARS-CoV-2 CT

@pytest.fixture(scope="module")
def sars_dir(data_dir):
    return _need(data_dir / "sarscov2_ct")


@pytest.fixture(scope="module")
def sars_splits(sars_dir):
    from ChestCTMTLTraining.sources.sarscov2_ct import split_sarscov2

    out = {}
    for cls in README_SARS:
        files = sorted((sars_dir / cls).glob("*.jpg"))
        out[cls] = {sp: split_sarscov2(files, SARS_HOLD, sp) for sp in ("train", "val", "all")}
    return out


def test_sarscov2_class_counts_are_the_readmes(sars_splits):
    for cls, n in README_SARS.items():
        s = sars_splits[cls]
        assert len(s["all"]) == n
        purged = set(s["all"]) - set(s["train"]) - set(s["val"])
        assert len(s["train"]) + len(s["val"]) + len(purged) == n
        assert 0.15 * n <= len(s["val"]) <= 0.21 * n
        assert len(purged) <= 0.1 * len(s["val"])


def test_sarscov2_split_is_contiguous_and_cut_between_patients(sars_splits):
    from ChestCTMTLTraining.sources.sarscov2_ct import file_number, thumbnail

    for cls, s in sars_splits.items():
        tr, va = [file_number(p) for p in s["train"]], [file_number(p) for p in s["val"]]
        assert not set(tr) & set(va)
        assert max(tr) < min(va), "held-out slices are one contiguous range of file numbers"
        files = s["all"]
        cut = len(s["train"])
        nominal = len(files) - int(round(len(files) * 0.2))
        sim = lambda i: float(thumbnail(files[i - 1]) @ thumbnail(files[i]))  # noqa: E731
        assert sim(cut) <= min(sim(nominal), 0.8), "the cut sits at a change of patient"


def test_sarscov2_no_near_duplicate_crosses_the_split(sars_splits):
    """No held-out slice has a training look-alike; a random split would have many (can fail)."""
    from ChestCTMTLTraining.sources.sarscov2_ct import thumbnail

    rng = np.random.default_rng(0)
    for cls, s in sars_splits.items():
        thumbs = {p: thumbnail(p) for p in s["all"]}
        a = np.stack([thumbs[p] for p in s["train"]])
        b = np.stack([thumbs[p] for p in s["val"]])
        assert (b @ a.T).max(axis=1).max() < 0.95
        perm = rng.permutation(len(s["all"]))
        t = np.stack([thumbs[s["all"][i]] for i in perm[:len(s["train"])]])
        v = np.stack([thumbs[s["all"][i]] for i in perm[len(s["train"]):]])
        assert ((v @ t.T).max(axis=1) >= 0.95).mean() > 0.15


@pytest.fixture(scope="module")
def sars_small_root(sars_dir, tmp_path_factory):
    """The first 30 slices of each class (links), so the adapter's records load in a second."""
    from ChestCTMTLTraining.sources.sarscov2_ct import file_number

    root = tmp_path_factory.mktemp("sars")
    for cls in README_SARS:
        (root / "sarscov2_ct" / cls).mkdir(parents=True)
        for p in sorted((sars_dir / cls).glob("*.jpg"), key=file_number)[:30]:
            (root / "sarscov2_ct" / cls / p.name).symlink_to(p)
    return root


def test_sarscov2_records(sars_small_root):
    from ChestCTMTLTraining.sources import load_source

    spec = {"name": "sars", "type": "sarscov2_ct", "path": "sarscov2_ct",
            "holdout": {"mode": "contiguous", "fraction": 0.2, "search": 3}}
    tr = load_source(spec, "train", REP, sars_small_root)
    va = load_source(spec, "val", REP, sars_small_root)
    for s in (tr, va):
        assert s.images.shape == (len(s), 64, 64) and s.images.dtype == np.float16
        assert 0.0 <= float(s.images.min()) and float(s.images.max()) <= 1.0 and s.images.astype(np.float32).std() > 0.05
        assert s.masks.shape == (len(s), len(LESION_TYPES), 64, 64) and not s.masks.any()
        assert not s.mask_present.any(), "no lesion masks in this source"
        assert set(s.classes.tolist()) == {COVID, NONCOVID} and not s.skipped
    assert len(tr) + len(va) == 60 and not set(tr.ids) & set(va.ids)
    by_folder = {m["folder"]: int(c) for m, c in zip(tr.meta, tr.classes)}
    assert by_folder == {"covid": COVID, "non-covid": NONCOVID}


def test_sarscov2_unknown_holdout_mode_is_a_clear_error(sars_small_root):
    from ChestCTMTLTraining.sources import load_source

    with pytest.raises(ValueError, match="unknown holdout mode"):
        load_source({"type": "sarscov2_ct", "holdout": {"mode": "random"}}, "train", REP, sars_small_root)


# --------------------------------------------------------------------------- COVID-CT-MD

@pytest.fixture(scope="module")
def ctmd(data_dir):
    from ChestCTMTLTraining.sources import load_source

    folder = _need(data_dir / "covid_ct_md")
    spec = {"name": "ctmd", "type": "covid_ct_md", "path": "covid_ct_md",
            "holdout": {"mode": "names", "names": ["cap_cap001"]}}
    return folder, {sp: load_source(spec, sp, REP, data_dir) for sp in ("train", "val")}


def _labels(path):
    with open(path, newline="") as f:
        return {int(r["k"]): int(r["infection"]) for r in csv.DictReader(f)}


def test_covid_ct_md_slice_classes_follow_the_labels(ctmd):
    folder, sets = ctmd
    tr, va = sets["train"], sets["val"]
    assert {m["scan"] for m in tr.meta} == {"normal_normal001", "covid_P001"}
    assert {m["scan"] for m in va.meta} == {"cap_cap001"}, "a whole scan stays on one side"
    for s in (tr, va):
        assert s.images.shape == (len(s), 64, 64) and not s.masks.any()
        for m, c, present in zip(s.meta, s.classes, s.mask_present):
            assert c == (COVID if m["diagnosis"] == "covid" else NONCOVID)
            assert present.all() == (m["diagnosis"] == "normal")
    p001 = _labels(folder / "covid_P001_slice_labels.csv")
    covid_k = sorted(m["k"] for m in tr.meta if m["scan"] == "covid_P001")
    assert covid_k == sorted(k for k, v in p001.items() if v) and len(covid_k) == 80
    cap = _labels(folder / "cap_cap001_slice_labels.csv")
    hard = sorted(m["k"] for m in va.meta if m["hard_negative"])
    assert hard == sorted(k for k, v in cap.items() if v) and len(hard) == 30
    normal = [m for m in tr.meta if m["scan"] == "normal_normal001"]
    assert 100 <= len(normal) <= 154 and not any(m["infection"] for m in normal)


def test_covid_ct_md_infected_slices_are_denser(ctmd):
    """Labels follow the right slices: infected P001 slices hold more dense lung than the rest."""
    from ChestCTMTLTraining.sources import load_source

    folder, _ = ctmd
    spec = {"type": "covid_ct_md", "path": "covid_ct_md", "uninfected_covid": "unlabelled",
            "holdout": {"mode": "names", "names": ["normal_normal001", "cap_cap001"]}}
    s = load_source(spec, "train", REP, folder.parent)
    assert {m["scan"] for m in s.meta} == {"covid_P001"} and (s.classes == -1).any()
    img = s.images.astype(np.float32)
    grey = ((img > 0.25) & (img < 0.6)).mean(axis=(1, 2))  # -700..-280 HU: ground glass
    inf = np.array([m["infection"] for m in s.meta])
    assert grey[inf].mean() > grey[~inf].mean()


def test_covid_ct_md_unknown_diagnosis_is_a_clear_error(ctmd, tmp_path):
    from ChestCTMTLTraining.sources import load_source

    folder, _ = ctmd
    (tmp_path / "covid_ct_md").mkdir()
    (tmp_path / "covid_ct_md" / "flu_x.nii.gz").symlink_to(folder / "normal_normal001.nii.gz")
    with pytest.raises(ValueError, match="unknown diagnosis prefix 'flu'"):
        load_source({"type": "covid_ct_md"}, "all", REP, tmp_path)


# --------------------------------------------------------------------------- LIDC nodule VOIs

@pytest.fixture(scope="module")
def vois(data_dir):
    from ChestCTMTLTraining.sources import load_source

    folder = _need(data_dir / "lidc_nodule_vois")
    spec = {"name": "vois", "type": "lidc_nodule_vois", "path": "lidc_nodule_vois",
            "holdout": {"mode": "last_fraction", "fraction": 0.2}}
    with open(folder / "nodules.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, {sp: load_source(spec, sp, REP, data_dir) for sp in ("train", "val")}


def test_vois_split_by_patient_without_the_whole_scan_cases(vois):
    rows, sets = vois
    pats = {sp: {m["patient"] for m in s.meta} for sp, s in sets.items()}
    assert not pats["train"] & pats["val"], "a patient's nodules stay on one side"
    excluded = {"LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"}
    assert not (pats["train"] | pats["val"]) & excluded
    assert len(pats["train"] | pats["val"]) == len({r["patient_id"] for r in rows} - excluded)


def test_vois_counts_are_the_readmes(vois):
    rows, sets = vois
    assert len(rows) == 993
    noduls = {m["nodule"]: m for s in sets.values() for m in s.meta}
    kept = [r for r in rows if r["patient_id"] != "LIDC-IDRI-0001"]
    assert len(noduls) == 991 - 1  # 991 crops, LIDC-IDRI-0001's one left out
    skipped = [x for s in sets.values() for x in s.skipped]
    assert len(skipped) == 2 and all("no crop" in x for x in skipped)
    stems = {"%s_R_%s" % (r["patient_id"], r["nodule_id"]): r for r in kept}
    big = [n for n in noduls if float(stems[n]["diameter_mm"]) >= 10]
    assert len(big) == len([r for r in kept if float(r["diameter_mm"]) >= 10]) - \
        len([x for x in skipped if float(stems[x.split(":")[0]]["diameter_mm"]) >= 10])
    assert 260 <= len(big) <= 266
    for s in sets.values():
        for m, c in zip(s.meta, s.classes):
            assert c == (CANCER if m["diagnosis"] == "Malign" else -1)


def test_vois_patches_are_nodules_with_masks(vois):
    _, sets = vois
    for s in sets.values():
        assert s.kind == "patch" and s.images.shape[1:] == (64, 64)
        assert s.masks.shape == (len(s), len(LESION_TYPES), 64, 64)
        assert s.mask_present.all()
        peak = s.masks[:, NOD].reshape(len(s), -1).max(axis=1)
        assert (peak > 100).all(), "every patch shows its nodule (one-pixel ends blur a little)"
        assert not s.masks[:, [t for t in range(len(LESION_TYPES)) if t != NOD]].any()
        img, m = s.images.astype(np.float32), s.masks[:, NOD] > 127
        assert img[m].mean() > img[~m].mean() + 0.2, "mask on the dense nodule, not on lung"
        assert all(0.2 < x["mm_per_pixel"] < 3 for x in s.meta)


# --------------------------------------------------------------------------- pack round trip

def test_pack_round_trip_of_the_new_sources(data_dir, sars_small_root, tmp_path):
    from ChestCTMTLTraining.config import load_config, representation_of
    from ChestCTMTLTraining.loading import load_split
    from ChestCTMTLTraining.pack import write_pack
    from ChestCTMTLTraining.sources import load_sources
    from ChestCTMTLTraining.sources.base import json_default

    root = tmp_path / "root"
    root.mkdir()
    (root / "sarscov2_ct").symlink_to(sars_small_root / "sarscov2_ct")
    for d in ("covid_ct_md", "lidc_nodule_vois"):
        (root / d).symlink_to(_need(data_dir / d))
    cfg = load_config("v3_sources", {"data_root": str(root), "model": {"input_size": 64}})
    cfg["sources"] = [dict(s, max_samples=12) for s in cfg["sources"]
                      if s["type"] in ("sarscov2_ct", "covid_ct_md", "lidc_nodule_vois")]
    for s in cfg["sources"]:
        if s["type"] == "sarscov2_ct":
            s["holdout"] = dict(s["holdout"], search=3)
        if s["type"] == "lidc_nodule_vois":
            s["min_diameter_mm"] = 25
    rep = representation_of(cfg)
    path = write_pack(cfg, tmp_path / "v3.npz")
    for split in ("train", "val"):
        direct = load_sources(cfg["sources"], split, rep, root)
        packed = load_split(dict(cfg, data_pack=str(path)), split, rep)
        assert [s.name for s in packed] == [s.name for s in direct] == ["sarscov2-ct", "covid-ct-md", "lidc-vois"]
        for d, p in zip(direct, packed):
            assert p.kind == d.kind and p.ids == d.ids and len(p) == 12
            np.testing.assert_array_equal(p.classes, d.classes)
            np.testing.assert_array_equal(p.masks, d.masks)
            np.testing.assert_array_equal(p.mask_present, d.mask_present)
            assert np.abs(p.images.astype(np.float32) - d.images.astype(np.float32)).max() <= 0.5 / 255 + 1e-3
            assert p.meta == json.loads(json.dumps(d.meta, default=json_default))


def test_new_sources_feed_the_mixed_sampler(vois, ctmd):
    """The trainer's sampler batches them: VOI patches become mosaics with nodule heatmap peaks,
    COVID-CT-MD slices keep their class (no training is run)."""
    from ChestCTMTLTraining.batching import MixedSampler

    _, v = vois
    _, c = ctmd
    sampler = MixedSampler([v["train"], c["train"]], [1.0, 1.0], 64, len(CLASS_NAMES), {"enabled": False})
    b = sampler.batch(0, 16)
    assert b["image"].shape == (16, 1, 64, 64) and b["masks"].shape == (16, len(LESION_TYPES), 64, 64)
    mosaic = b["cls"] == -1
    assert mosaic.any() and (~mosaic).any()
    assert (b["hm"][mosaic, NOD].amax(dim=(1, 2)) == 1.0).all(), "every mosaic has nodule centres"
    assert set(b["cls"][~mosaic].tolist()) <= {COVID, NONCOVID}
