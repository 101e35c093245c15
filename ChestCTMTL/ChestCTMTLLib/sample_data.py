"""The sample chest CTs for the main job: lung1/lung2 from PyRadiomics' source archive.

No chest CT may be committed and ../shared/data is absent on a fresh machine, but PyPI carries
PyRadiomics 3.0.1's source archive, which holds two real chest CTs in HU with lesion masks
(BSD-3). We fetch that one pinned archive with pip at set-up time, check its SHA-256, and extract
only the four NRRD files into the cache. Nothing from it is installed or imported.

Run ``python -m ChestCTMTLLib.sample_data`` to fetch; :func:`sample_path` finds the files later
without touching the network.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict

from .paths import cache_dir

ARCHIVE = "pyradiomics-3.0.1.tar.gz"
ARCHIVE_SHA256 = "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5"
#: SHA-256 of each extracted file (also what Slicer's SampleData entry checks).
MEMBER_SHA256 = {
    "lung1_image.nrrd": "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
    "lung1_label.nrrd": "e9d9a88054d7bc1d3034193ff907ce6b8c6ba28a7bc3a16f23728982d1b6b50a",
    "lung2_image.nrrd": "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
    "lung2_label.nrrd": "cef52738dc51aab69a48fe30639da956d2b911b1c2920439c091fab84727657a",
}
MEMBERS = tuple(MEMBER_SHA256)
#: The same files at PyRadiomics' v3.0.1 tag, for Slicer's SampleData (downloaded on click).
MEMBER_URL = "https://raw.githubusercontent.com/AIM-Harvard/pyradiomics/v3.0.1/data/{name}"


class SampleDataError(RuntimeError):
    """The sample could not be fetched or failed verification."""


def sample_dir() -> Path:
    return cache_dir() / "pyradiomics-3.0.1"


def sample_path(name: str = "lung1_image.nrrd") -> Path:
    """Path of an extracted sample file; raises with the fetch command if it is missing."""
    path = sample_dir() / name
    if not path.is_file():
        raise SampleDataError(
            f"Sample file {path} is missing. Fetch it once with: "
            f"{sys.executable} -m ChestCTMTLLib.sample_data")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sample(force: bool = False) -> Dict[str, Path]:
    """Download (once), verify and extract the four sample NRRDs; returns name -> path."""
    target = sample_dir()
    if not force and all((target / m).is_file() for m in MEMBERS):
        return {m: target / m for m in MEMBERS}
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chestctmtl-sample-") as tmp:
        tmp_path = Path(tmp)
        # --no-build-isolation: pip runs setup.py for metadata, which imports numpy; the
        # project environment has numpy, setuptools and wheel, so nothing else is fetched.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-build-isolation", "--disable-pip-version-check", "pyradiomics==3.0.1",
               "-d", str(tmp_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archive = tmp_path / ARCHIVE
        if proc.returncode != 0 or not archive.is_file():
            raise SampleDataError(f"pip could not download {ARCHIVE}:\n{proc.stderr[-2000:]}")
        digest = _sha256(archive)
        if digest != ARCHIVE_SHA256:
            raise SampleDataError(f"{ARCHIVE} has SHA-256 {digest}, expected {ARCHIVE_SHA256}")
        staging = Path(tempfile.mkdtemp(prefix=".sample-", dir=target.parent))
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in MEMBERS:
                    info = tar.getmember(f"pyradiomics-3.0.1/data/{member}")
                    source = tar.extractfile(info)
                    if source is None:
                        raise SampleDataError(f"{member} is not a file in {ARCHIVE}")
                    with open(staging / member, "wb") as out:
                        shutil.copyfileobj(source, out)
                    if _sha256(staging / member) != MEMBER_SHA256[member]:
                        raise SampleDataError(f"{member} in {ARCHIVE} has an unexpected SHA-256")
            os.chmod(staging, 0o755)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return {m: target / m for m in MEMBERS}


def main() -> int:
    try:
        paths = fetch_sample()
    except SampleDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
