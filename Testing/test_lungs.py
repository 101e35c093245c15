"""Lung segmentation (ChestCTMTLLib.lungs): known answers on a phantom, defensible ones on every
whole CT in the data root.

The real-scan answers are anatomy, not our own numbers: adult lungs hold 0.7-5 L each and
2-8 L together at full inspiration (a partial scan or a thick-slice one still lands there),
the right lung lies on the patient's right (larger RAS x), each lung is one 3D piece (bowel or
stomach gas joined to it would be a second piece below the diaphragm), and the trachea - the
very dark air on the body's midline in the cranial part of the lungs - is not lung.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ChestCTMTLLib import lungs as L
from ChestCTMTLLib.orientation import axial_view
from ChestCTMTLLib.volume_io import read_ct


def phantom(slice_mm: float = 2.0, px_mm: float = 1.0, size: int = 256, lung_hu: int = -850):
    """A canonical (slices inferior->superior, rows A->P, cols R->L) chest phantom in HU.

    Soft-tissue body (40 HU) in air; two lung ellipsoids (-850 HU) touching nothing; a trachea
    tube (-1000 HU) on the midline from the top joining the lungs at a carina; a bowel-gas
    blob (-1000 HU) below the right lung; a 12 mm soft-tissue nodule inside the left lung.
    """
    h_mm = 300.0
    k = int(h_mm / slice_mm)
    z = (np.arange(k) + 0.5) * slice_mm  # mm from the bottom
    y = (np.arange(size) + 0.5) * px_mm
    x = (np.arange(size) + 0.5) * px_mm
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    cy, cx = size * px_mm / 2, size * px_mm / 2
    hu = np.full((k, size, size), -1000, np.int16)
    body = ((yy - cy) / (0.42 * size * px_mm)) ** 2 + ((xx - cx) / (0.47 * size * px_mm)) ** 2 <= 1
    hu[body] = 40
    right = ((zz - 170) / 90) ** 2 + ((yy - cy) / 50) ** 2 + ((xx - (cx - 45)) / 35) ** 2 <= 1
    left = ((zz - 170) / 90) ** 2 + ((yy - cy) / 50) ** 2 + ((xx - (cx + 45)) / 32) ** 2 <= 1
    hu[right] = lung_hu
    hu[left] = lung_hu
    trachea = ((yy - (cy - 15)) ** 2 + (xx - cx) ** 2 <= 8 ** 2) & (zz >= 200)
    for sign in (-1, 1):  # main bronchi from the carina into each lung
        t = np.clip((200 - zz) / 25.0, 0, 1)
        bx = cx + sign * 25 * t
        bronchus = ((yy - (cy - 15)) ** 2 + (xx - bx) ** 2 <= 5 ** 2) & (zz >= 175) & (zz < 200)
        trachea |= bronchus
    hu[trachea & body] = -1000
    bowel = ((zz - 45) / 15) ** 2 + ((yy - cy) / 25) ** 2 + ((xx - (cx - 40)) / 25) ** 2 <= 1
    hu[bowel] = -1000
    nodule = (zz - 160) ** 2 + (yy - cy) ** 2 + (xx - (cx + 55)) ** 2 <= 6 ** 2
    hu[nodule] = 30
    return hu, (slice_mm, px_mm, px_mm), {"right": right, "left": left, "trachea": trachea & body,
                                          "bowel": bowel, "nodule": nodule}


@pytest.mark.parametrize("slice_mm,px_mm,size,lung_hu", [(2.0, 1.0, 256, -850), (5.0, 0.7, 384, -850),
                                                        (8.0, 1.4, 192, -850),
                                                        (2.0, 1.0, 256, -960)],  # emphysema
                         ids=["2mm-256", "5mm-384", "8mm-192", "emphysema"])
def test_phantom_known_answer(slice_mm, px_mm, size, lung_hu):
    hu, spacing, truth = phantom(slice_mm, px_mm, size, lung_hu)
    mask = L.segment_lungs(hu, spacing)
    assert mask.found and mask.labels.shape == hu.shape
    lab = mask.labels
    for name, value in (("right", L.RIGHT), ("left", L.LEFT)):
        got, want = lab == value, truth[name]
        dice = 2 * (got & want).sum() / (got.sum() + want.sum())
        assert dice > 0.93, (name, dice)
    # the nodule inside the left lung is lung (hole filling), the bowel gas and trachea are not
    assert (lab[truth["nodule"]] == L.LEFT).mean() > 0.95
    assert not lab[truth["bowel"]].any()
    upper_trachea = truth["trachea"] & (np.arange(hu.shape[0])[:, None, None] * slice_mm >= 205)
    assert (lab[upper_trachea] == 0).mean() > 0.95
    vols = mask.volume_ml()
    expected = {n: float(truth[n].sum()) * np.prod(spacing) / 1000 for n in ("right", "left")}
    assert vols["right lung"] == pytest.approx(expected["right"], rel=0.08)
    assert vols["left lung"] == pytest.approx(expected["left"], rel=0.08)


def test_no_lungs_is_not_an_error():
    hu = np.full((20, 64, 64), 40, np.int16)
    mask = L.segment_lungs(hu, (2.0, 1.0, 1.0))
    assert not mask.found and not mask.labels.any()


def test_lesion_growth_adds_juxtapleural_lesion_but_not_mediastinum():
    hu, spacing, truth = phantom(2.0, 1.0, 256)
    # a dense lesion bulging out of the right lung's lateral surface (consolidation)
    k, h, w = hu.shape
    zz, yy, xx = np.meshgrid(np.arange(k) * 2.0, np.arange(h) * 1.0, np.arange(w) * 1.0, indexing="ij")
    bulge = ((zz - 170) ** 2 + (yy - 128) ** 2 + (xx - (128 - 78)) ** 2 <= 12 ** 2) & truth["right"]
    hu[bulge] = 20
    heart = (zz - 120) ** 2 + (yy - 128) ** 2 + (xx - 128) ** 2 <= 15 ** 2  # between the lungs
    mask = L.segment_lungs(hu, spacing)
    lesion = bulge | heart
    before = (mask.labels[bulge] == L.RIGHT).mean()
    added = L.grow_into_lesions(mask, lesion)
    assert added > 0 and (mask.labels[bulge] == L.RIGHT).all() and before < 1.0
    assert not mask.labels[heart & ~truth["right"] & ~truth["left"]].any()


# --------------------------------------------------------------------------- real whole CTs
WHOLE_CTS = {
    "LIDC-IDRI-0001": "lidc/LIDC-IDRI-0001",
    "LIDC-IDRI-0002": "lidc/LIDC-IDRI-0002-nifti/image.nii.gz",
    "COVID-CT-MD normal001": "covid_ct_md/normal_normal001.nii.gz",
    "COVID-CT-MD cap001": "covid_ct_md/cap_cap001.nii.gz",
    "COVID-CT-MD P001": "covid_ct_md/covid_P001.nii.gz",
}


def _real(name, data_dir):
    from ChestCTMTLLib import sample_data

    if name in WHOLE_CTS:
        path = data_dir / WHOLE_CTS[name]
        if not path.exists():
            pytest.skip("whole CT %s not in the data root" % path)
        return read_ct(str(path))
    try:
        return read_ct(str(sample_data.sample_path(name + "_image.nrrd")))
    except sample_data.SampleDataError as exc:
        pytest.skip("sample CT not fetched: %s" % exc)


@pytest.mark.parametrize("name", sorted(WHOLE_CTS) + ["lung1", "lung2"])
def test_lungs_of_every_whole_ct(name, data_dir):
    vol = _real(name, data_dir)
    view = axial_view(vol.ijk_to_ras, vol.array.shape)
    canon = view.to_canonical(vol.array)
    mask = L.segment_lungs(canon, view.spacing)
    assert mask.found, "no lungs found in %s" % name
    vols = mask.volume_ml()
    for side, ml in vols.items():
        assert 700 <= ml <= 5000, (name, side, ml)
    assert 2000 <= sum(vols.values()) <= 8000, (name, vols)
    labels = np.zeros(vol.array.shape, np.uint8)
    view.to_canonical(labels)[...] = mask.labels
    # the right lung is on the patient's right: larger RAS x (R is +x)
    xs = {}
    for value in (L.RIGHT, L.LEFT):
        k, j, i = np.nonzero(labels[::2, ::4, ::4] == value)
        ras = vol.ijk_to_ras_points(np.stack([i * 4, j * 4, k * 2], axis=1))
        xs[value] = ras[:, 0].mean()
    assert xs[L.RIGHT] > xs[L.LEFT] + 40, (name, xs)
    # each lung is one 3D piece: nothing (bowel / stomach gas) hangs on as a second one
    for value in (L.RIGHT, L.LEFT):
        lab, n = ndimage.label(mask.labels[:, ::2, ::2] == value)
        sizes = np.bincount(lab.ravel())[1:]
        assert sizes.max() >= 0.97 * sizes.sum(), (name, value, sorted(sizes)[-3:])
    # the trachea: very dark air on the body's midline in the lungs' cranial third is not lung
    ks = np.nonzero(mask.labels.any(axis=(1, 2)))[0]
    top = slice(int(ks[-1] - (ks[-1] - ks[0]) // 3), int(ks[-1]) + 1)
    cols = np.nonzero((canon[top] > -400).any(axis=(0, 1)))[0]
    mid, half = 0.5 * (cols[0] + cols[-1]), 0.06 * (cols[-1] - cols[0])
    band = slice(int(mid - half), int(mid + half) + 1)
    air = canon[top, :, band] < -950
    if air.sum() > 50:
        assert (mask.labels[top, :, band][air] == 0).mean() > 0.9, name


def test_a_volume_without_lungs_lists_no_lesion(tmp_path):
    """An abdomen-like volume (soft tissue with bowel gas, no lungs): the model may fire on the
    gas, but without lungs nothing is listed and the report says why."""
    from ChestCTMTLLib import modelio
    from ChestCTMTLLib.inference import Analyzer
    from ChestCTMTLLib.model import ModelConfig
    from ChestCTMTLLib.options import AnalysisOptions
    from ChestCTMTLLib.volume import CTVolume

    hu, spacing, truth = phantom(5.0, 1.5, 128)
    hu[truth["right"] | truth["left"] | truth["trachea"]] = 40  # no lungs, bowel gas stays
    vol = CTVolume(hu[:, :, ::-1].copy(), np.diag([1.5, 1.5, 5.0, 1.0]), name="abdomen")
    folder = modelio.create_untrained_model_folder(tmp_path / "m", ModelConfig(backbone="fast", input_size=64))
    res = Analyzer(folder, AnalysisOptions(device="cpu", score_threshold=0.0)).apply(vol)
    assert res.lungs["found"] is False and "no lungs" in res.lungs["warning"]
    assert res.findings == [] and not res.lung_labels.any()
    assert all(not m.any() for m in res.lesion_masks.values())
    assert res.involvement["both"]["percent"] is None and res.involvement["reason"]
