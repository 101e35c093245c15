"""Shared pytest fixtures: real data locations (skipping with a reason when absent)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO / "ChestCTMTL", REPO, REPO / "Testing"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from ChestCTMTLLib.paths import data_root  # noqa: E402

try:  # keep the 2-core CI machine responsive and runs reproducible
    import torch

    torch.set_num_threads(2)
except ImportError:  # pragma: no cover
    pass


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing "
                    f"(set CHESTCTMTL_DATA or place the data at ../shared/data)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _require(data_root())


@pytest.fixture(scope="session")
def lidc0001_dicom_dir(data_dir) -> Path:
    """The LIDC-IDRI-0001 DICOM series folder (the one holding the .dcm files)."""
    base = _require(data_dir / "lidc" / "LIDC-IDRI-0001")
    folders = sorted({p.parent for p in base.rglob("*.dcm")})
    if not folders:
        pytest.skip(f"no DICOM files under {base}")
    return folders[0]


@pytest.fixture(scope="session")
def lidc0002_nifti(data_dir) -> Path:
    return _require(data_dir / "lidc" / "LIDC-IDRI-0002-nifti" / "image.nii.gz")


@pytest.fixture(scope="session")
def lidc_files(lidc0001_dicom_dir):
    """The 133 slice files of LIDC-IDRI-0001's CT series, in slice order."""
    from ChestCTMTLLib.volume_io import find_dicom_series

    series = find_dicom_series(lidc0001_dicom_dir)
    assert series and len(series[0][1]) == 133
    return series[0][1]


@pytest.fixture()
def scene():
    """The headless MRML scene (real slicer-core MRML), empty before and after the test."""
    from ChestCTMTLMRML import headless

    scene = headless.get_scene()
    scene.Clear(False)
    yield scene
    scene.Clear(False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny test inputs gain nothing from threads, and on a shared 2-core machine OpenMP
    threads waiting on each other make them many times slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def small_ct(lidc0002_nifti, tmp_path_factory):
    """Six real LIDC-IDRI-0002 slices, every 4th voxel, 100 rows (so i and j differ)."""
    from ChestCTMTLLib.volume_io import read_ct
    from mrml_testutil import crop_ct_file

    path = crop_ct_file(lidc0002_nifti, tmp_path_factory.mktemp("ct") / "small.nii.gz",
                        first=110, count=6, step=4, rows=100)
    return read_ct(path)
