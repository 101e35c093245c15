"""Helpers for the DICOM output tests: masks from .seg.nrrd / dcmqi files placed on a volume's
grid by their own geometry (so a mirrored or shifted object cannot compare equal), series
copies with one defect each, and a throw-away Orthanc."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Optional

import numpy as np


def place_on_grid(image, ijk_to_lps: np.ndarray, shape) -> np.ndarray:
    """A 3D SimpleITK image's voxels on the (k, j, i) grid of ``ijk_to_lps``: same spacing and
    direction required, integer offset from the origins; voxels outside the grid must be 0."""
    import SimpleITK as sitk

    spacing = np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    grid_dir = ijk_to_lps[:3, :3] / np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    grid_spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    assert np.allclose(direction, grid_dir, atol=1e-4), (direction, grid_dir)
    assert np.allclose(spacing, grid_spacing, atol=1e-4), (spacing, grid_spacing)
    offset = np.linalg.inv(ijk_to_lps) @ np.append(np.asarray(image.GetOrigin()), 1.0)
    start = np.round(offset[:3]).astype(int)
    assert np.allclose(offset[:3], start, atol=1e-2), offset
    array = sitk.GetArrayFromImage(image)
    out = np.zeros(shape, dtype=array.dtype)
    lo = np.maximum(start[::-1], 0)
    hi = np.minimum(start[::-1] + array.shape, shape)
    src = tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, start[::-1]))
    out[tuple(slice(l, h) for l, h in zip(lo, hi))] = array[src]
    assert out.sum() == array.sum(), "voxels outside the source grid"
    return out


def seg_nrrd_masks(path: Path, ijk_to_lps: np.ndarray, shape) -> Dict[str, np.ndarray]:
    """Segment name -> 0/1 mask of a Slicer .seg.nrrd (3D, or 4D with one layer per 4th axis)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    keys = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    layers = [image] if image.GetDimension() == 3 else [
        sitk.VectorIndexSelectionCast(image, n) for n in range(image.GetNumberOfComponentsPerPixel())]
    out = {}
    n = 0
    while "Segment{}_Name".format(n) in keys:
        layer = int(keys.get("Segment{}_Layer".format(n), 0))
        label = int(keys["Segment{}_LabelValue".format(n)])
        grid = place_on_grid(layers[layer], ijk_to_lps, shape)
        out[keys["Segment{}_Name".format(n)]] = (grid == label).astype(np.uint8)
        n += 1
    return out


def copy_series(src_dir, dst: Path, files=None) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in files if files is not None else sorted(src_dir.glob("*.dcm")):
        shutil.copy2(f, dst / f.name)
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """Orthanc on free local ports with its storage in ``folder``; stopped by :meth:`stop`."""

    def __init__(self, binary: str, folder: Path, aet: str = "ORTHANC",
                 calling_aet: str = "CHESTCTMTL") -> None:
        self.aet, self.dicom_port, self.http_port = aet, free_port(), free_port()
        config = {"Name": "chestctmtl-test", "StorageDirectory": str(folder / "db"),
                  "IndexDirectory": str(folder / "db"), "DicomAet": aet,
                  "DicomPort": self.dicom_port, "HttpPort": self.http_port,
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "Plugins": [], "DicomCheckCalledAet": True, "HttpServerEnabled": True,
                  # a PACS answers C-FIND only to modalities it knows
                  "DicomModalities": {"chestctmtl": [calling_aet, "127.0.0.1", free_port()]}}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self._log = open(folder / "orthanc.log", "w")
        self.process = subprocess.Popen([binary, str(folder / "orthanc.json")],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("Orthanc exited: " + (folder / "orthanc.log").read_text()[-2000:])
            try:
                self.get("/system")
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer within 30 s")

    def get(self, path: str):
        url = "http://127.0.0.1:{}{}".format(self.http_port, path)
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read().decode("utf-8"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def which(name: str) -> Optional[str]:
    """A tool on PATH, beside this interpreter (dcmqi's console scripts in the venv) or in
    /usr/sbin (Debian's Orthanc)."""
    here = Path(sys.executable).parent / name
    return shutil.which(name) or next((str(p) for p in (here, Path("/usr/sbin") / name)
                                       if p.is_file()), None)
