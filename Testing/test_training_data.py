"""Training data adapters on the real data: LIDC consensus, NIfTI pairs, COVID-SemiSeg label
kinds, image-folder classes, MSD patches, splits, and mask/geometry alignment."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ChestCTMTLLib.representation import Representation, SliceGeometry
from ChestCTMTLLib.results import CLASS_NAMES, LESION_TYPES

REP = Representation(input_size=128)
NOD = LESION_TYPES.index("nodule-mass")
COV = LESION_TYPES.index("covid-infection")


@pytest.fixture(scope="module")
def lidc_case(lidc0001_dicom_dir):
    from ChestCTMTLTraining.lidc import read_lidc_case

    return read_lidc_case(lidc0001_dicom_dir, min_readers=2)


def test_lidc0001_consensus_nodule_is_about_25mm(lidc_case):
    assert lidc_case.hu.shape == (133, 512, 512)
    assert len(lidc_case.nodules) == 1
    nod = lidc_case.nodules[0]
    assert 22.0 <= nod.equivalent_diameter_mm <= 28.0
    assert nod.readers == 4
    assert nod.malignancy is not None and nod.malignancy >= 4  # the readers rated it likely malignant
    # small (< 3 mm) nodules are kept as centroids only, outside the consensus mask
    assert lidc_case.small_nodules and all(n.small and n.voxels == 1 for n in lidc_case.small_nodules)


def test_lidc0001_mask_is_aligned_with_the_image(lidc_case):
    """The consensus voxels are solid tissue; the shell just around them is mostly lung air."""
    from scipy import ndimage

    mask = lidc_case.consensus > 0
    inside = lidc_case.hu[mask]
    shell = ndimage.binary_dilation(mask, iterations=4) & ~ndimage.binary_dilation(mask, iterations=1)
    assert np.median(inside) > -300
    assert np.median(lidc_case.hu[shell]) < np.median(inside) - 200
    # shifting the mask by 10 voxels breaks the alignment: the test can fail
    shifted = np.roll(mask, 10, axis=2)
    assert np.median(lidc_case.hu[shifted & ~mask]) < np.median(inside)


def test_lidc_min_readers_is_configurable(lidc0001_dicom_dir, lidc_case):
    from ChestCTMTLTraining.lidc import read_lidc_case

    one = read_lidc_case(lidc0001_dicom_dir, min_readers=1)
    assert (one.consensus > 0).sum() > (lidc_case.consensus > 0).sum()


def test_lidc_adapter_slices_classes_and_masks(data_dir):
    from ChestCTMTLTraining.data import load_source

    spec = {"name": "lidc", "type": "lidc_dicom", "path": "lidc/LIDC-IDRI-0001", "holdout": {"mode": "none"}}
    s = load_source(spec, "train", REP, data_dir)
    assert s.images.shape[1:] == (128, 128) and 0 <= float(s.images.min()) and float(s.images.max()) <= 1
    with_nodule = s.masks[:, NOD].reshape(len(s), -1).max(axis=1) > 127
    assert with_nodule.sum() >= 5
    assert set(s.classes[with_nodule].tolist()) == {CLASS_NAMES.index("cancer")}
    assert (s.classes == CLASS_NAMES.index("non-covid")).sum() > 50
    assert s.mask_present.all()  # nodule annotated; COVID known absent
    assert s.volumes[0]["nodules"] and 22 <= s.volumes[0]["nodules"][0]["diameter_mm"] <= 28
    # the nodule in model pixels sits where the geometry maps the voxel centroid
    g = SliceGeometry(**{**s.volumes[0]["geometry"], "in_shape": tuple(s.volumes[0]["geometry"]["in_shape"])})
    k, j, i = s.volumes[0]["nodules"][0]["centroid_kji"]
    x, y = g.input_to_model_xy(i + 0.5, j + 0.5)
    idx = [n for n, m in enumerate(s.meta) if m["k"] == int(round(k))][0]
    assert s.masks[idx, NOD, int(y), int(x)] > 127


def test_nifti_pair_adapter_matches_nodules_csv(data_dir):
    from ChestCTMTLTraining.data import load_source

    spec = {"name": "lidc2", "type": "volume_pair", "image": "lidc/LIDC-IDRI-0002-nifti/image.nii.gz",
            "mask": "lidc/LIDC-IDRI-0002-nifti/nodule_mask.nii.gz", "csv": "lidc/LIDC-IDRI-0002-nifti/nodules.csv",
            "holdout": {"mode": "all"}, "slice_stride": 4}
    assert len(load_source(spec, "train", REP, data_dir)) == 0  # held out entirely
    s = load_source(spec, "val", REP, data_dir)
    vol = s.volumes[0]
    assert len(vol["nodules"]) == 1  # one-voxel reader marks are not lesions
    row = [r for r in vol["csv"] if float(r["equiv_diam_mm"]) > 3][0]
    nod = vol["nodules"][0]
    assert abs(nod["diameter_mm"] - float(row["equiv_diam_mm"])) < 1.5
    k0, k1, j0, j1, i0, i1 = nod["bbox_kji"]
    assert (i0, j0, k0) == (int(row["bbox_x"]), int(row["bbox_y"]), int(row["bbox_z"]))
    assert (i1 - i0, j1 - j0, k1 - k0) == (int(row["bbox_sx"]), int(row["bbox_sy"]), int(row["bbox_sz"]))
    assert s.masks[:, NOD].max() == 255


def test_covid_semiseg_kinds_and_split(data_dir):
    from ChestCTMTLTraining.data import load_source

    base = "covid_semiseg/TrainingSet/"
    hold = {"mode": "last_fraction", "fraction": 0.2}
    doc = {"name": "d", "type": "covid_semiseg", "path": base + "LungInfection-Train/Doctor-label", "kind": "doctor",
           "holdout": hold}
    tr, va = load_source(doc, "train", REP, data_dir), load_source(doc, "val", REP, data_dir)
    assert len(tr) == 40 and len(va) == 10
    assert not set(tr.ids) & set(va.ids)
    assert (tr.classes == CLASS_NAMES.index("covid")).all()
    assert tr.masks[:, COV].max() == 255 and (tr.seg_weight == 1.0).all()
    pseudo = {"name": "p", "type": "covid_semiseg", "path": base + "LungInfection-Train/Pseudo-label",
              "kind": "pseudo", "max_samples": 20}
    p = load_source(pseudo, "train", REP, data_dir)
    assert len(p) == 20 and (p.seg_weight == 0.5).all()
    assert len(np.unique(p.masks[:, COV])) > 10  # soft labels kept soft
    multi = {"name": "m", "type": "covid_semiseg", "path": base + "MultiClassInfection-Train", "kind": "multiclass",
             "holdout": hold}
    m = load_source(multi, "val", REP, data_dir)
    assert sorted(m.ids, key=lambda x: x.split("/")[-1]) and len(m) == 10
    # same slices as the doctor labels: the multi-class union overlaps the binary infection mask
    d = {i.split("/")[-1]: n for n, i in enumerate(va.ids)}
    n_m, i_m = 0, m.ids[0].split("/")[-1]
    a, b = m.masks[n_m, COV] > 127, va.masks[d[i_m], COV] > 127
    if a.any() or b.any():
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.5


def test_covid_mask_maps_back_to_original_size(data_dir):
    """Model-grid mask -> original size through the inverse geometry reproduces the GT."""
    from PIL import Image

    from ChestCTMTLTraining.data import load_source
    from ChestCTMTLTraining.evaluate import geometry_from_dict

    spec = {"name": "d", "type": "covid_semiseg", "path": "covid_semiseg/TrainingSet/LungInfection-Train/Doctor-label",
            "kind": "doctor", "max_samples": 3}
    s = load_source(spec, "train", Representation(input_size=256), data_dir)
    for n in range(len(s)):
        meta = s.meta[n]
        gt = np.asarray(Image.open(meta["mask"]).convert("L")) >= 128
        g = geometry_from_dict(meta["geometry"])
        back = g.to_input(torch.from_numpy(s.masks[n, COV].astype(np.float32) / 255.0)[None, None])[0, 0].numpy() >= 0.5
        assert back.shape == gt.shape
        if gt.sum() > 200:
            assert 2 * (back & gt).sum() / (back.sum() + gt.sum()) > 0.9


def test_image_folder_mapping_and_lesion_free(data_dir):
    from ChestCTMTLTraining.data import load_source

    spec = {"name": "iq", "type": "image_folder", "path": "iq_othnccd",
            "mapping": {"normal": "non-covid", "malignant": "cancer", "benign": None},
            "lesion_free": ["normal"], "holdout": {"mode": "last_fraction", "fraction": 0.2}}
    tr, va = load_source(spec, "train", REP, data_dir), load_source(spec, "val", REP, data_dir)
    assert len(tr) + len(va) == 334 + 433  # benign dropped
    assert not any("benign" in i for i in tr.ids + va.ids)
    assert set(tr.classes.tolist()) == {CLASS_NAMES.index("non-covid"), CLASS_NAMES.index("cancer")}
    normal = tr.classes == CLASS_NAMES.index("non-covid")
    assert tr.mask_present[normal].all() and not tr.mask_present[~normal].any()
    # contiguous hold-out: the validation malignant cases have the highest case numbers
    import re

    num = lambda s: int(re.findall(r"\((\d+)\)", s)[0])  # noqa: E731
    tr_mal = [num(i) for i in tr.ids if "/malignant/" in i]
    va_mal = [num(i) for i in va.ids if "/malignant/" in i]
    assert min(va_mal) > max(tr_mal)
    mapped = dict(spec, mapping={"normal": "non-covid", "malignant": "cancer", "benign": "non-covid"},
                  holdout={"mode": "none"}, max_samples=None)
    assert len(load_source(mapped, "train", REP, data_dir)) == 334 + 433 + 86


def test_msd_patches_and_mosaic(data_dir):
    from ChestCTMTLTraining.data import load_source, mosaic

    spec = {"name": "msd", "type": "msd_h5",
            "files": ["msd_lung_patches/val_patches.h5", "msd_lung_patches/test_patches.h5"],
            "holdout": {"mode": "names", "names": ["test_patches.h5"]}}
    tr, va = load_source(spec, "train", REP, data_dir), load_source(spec, "val", REP, data_dir)
    assert len(tr) == 130 and len(va) == 130 and tr.kind == "patch"
    assert tr.images.shape[1:] == (48, 48) and (tr.classes == -1).all()
    assert set(np.unique(tr.masks[:, NOD]).tolist()) <= {0, 255}
    img, msk = mosaic(tr.images[:9], tr.masks[:9], 255)
    assert img.shape == (255, 255) and msk.shape == (len(LESION_TYPES), 255, 255)
    assert abs(msk[NOD].mean() - tr.masks[:9, NOD].mean() / 255) < 0.02


def test_unreadable_files_are_reported_and_skipped(tmp_path):
    from ChestCTMTLTraining.data import load_source

    root = tmp_path
    (root / "set" / "Imgs").mkdir(parents=True)
    (root / "set" / "GT").mkdir()
    from PIL import Image

    Image.fromarray(np.full((40, 50), 100, np.uint8)).save(root / "set" / "Imgs" / "1.png")
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(root / "set" / "GT" / "1.png")
    (root / "set" / "Imgs" / "2.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(root / "set" / "GT" / "2.png")
    Image.fromarray(np.full((30, 30), 100, np.uint8)).save(root / "set" / "Imgs" / "3.png")  # no mask
    s = load_source({"type": "covid_semiseg", "path": "set", "kind": "doctor"}, "train", REP, root)
    assert len(s) == 1 and len(s.skipped) == 2
    assert any("2.png" in x for x in s.skipped) and any("no mask" in x for x in s.skipped)


def test_unknown_source_type_is_refused(tmp_path):
    from ChestCTMTLTraining.data import load_source

    with pytest.raises(ValueError, match="unknown source type"):
        load_source({"type": "dicom_sr"}, "train", REP, tmp_path)
