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
