"""The one input representation shared by training and inference.

Why this representation
-----------------------
Only LIDC is in Hounsfield units; COVID-SemiSeg (JPG) and IQ-OTH/NCCD (PNG) are already
windowed 8-bit slices in which air is black. To train them together with HU volumes every
source is brought to one unit-intensity image:

* HU volumes: a fixed window ``[-1000, 200]`` HU (W1200 / L-400) mapped linearly to ``[0, 1]``
  and clipped. Air (-1000 HU) lands on 0 like the black air of the 8-bit sources, lung
  parenchyma (about -850 HU) near 0.1 and soft tissue near 0.87, close to how the
  COVID-SemiSeg JPGs were windowed. The window is stored in the model card, so a model trained
  with another one is applied with its own.
* 8-bit slices: grey value / 255 (colour is converted to grey with ITU-R 601 luma, the same
  formula PIL uses for mode "L").
* Geometry: the image is cut to a *square box* (which may extend past the image; outside is
  filled with 0 = air) and resized to ``input_size`` x ``input_size`` (default 256) with
  bilinear interpolation (antialiased when shrinking). For HU volumes the box is the lung
  bounding box of the whole volume plus a margin, so full 512-px CT slices look like the
  lung-cropped COVID-SemiSeg slices and small nodules keep about 1 mm per model pixel; one box
  for the whole volume keeps slices consistent for 3D merging. For 2D 8-bit slices (whose
  framing is unknown) the box is the whole image padded to a square, so aspect is never
  distorted.

Slices are axial in radiological display orientation - rows anterior->posterior, columns from
the patient's right to left (ITK "LPS" axis order, which LIDC DICOM already has and training
reaches with ``SimpleITK.DICOMOrient(img, "LPS")``); inference reorients any volume the same way.

Coordinates are continuous pixel coordinates in which pixel ``p`` spans ``[p, p + 1)``;
:class:`SliceGeometry` maps model-input coordinates back to input pixels exactly and resizes
model outputs back onto the input grid.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


DEFAULT_HU_WINDOW = (-1000.0, 200.0)
DEFAULT_INPUT_SIZE = 256


@dataclass
class Representation:
    """Everything needed to turn raw pixels into model input; stored in model.json."""

    input_size: int = DEFAULT_INPUT_SIZE
    hu_window: Tuple[float, float] = DEFAULT_HU_WINDOW
    volume_crop: str = "lung"  # "lung" | "none" (HU volumes only)
    crop_margin_mm: float = 10.0
    name: str = "lung-window-unit-v1"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hu_window"] = [float(v) for v in self.hu_window]
        d["description"] = (
            "HU window [%g, %g] -> [0,1] clipped; 8-bit grey /255; square box (lung bbox + "
            "%g mm for volumes, whole padded image for 2D slices) resized bilinearly to %dx%d"
            % (self.hu_window[0], self.hu_window[1], self.crop_margin_mm, self.input_size,
               self.input_size))
        return d

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "Representation":
        if not d:
            return cls()
        known = {k: d[k] for k in ("input_size", "hu_window", "volume_crop", "crop_margin_mm", "name")
                 if k in d}
        if "hu_window" in known:
            known["hu_window"] = tuple(float(v) for v in known["hu_window"])
        return cls(**known)


# --------------------------------------------------------------------------- intensities

def hu_to_unit(hu, window: Sequence[float] = DEFAULT_HU_WINDOW) -> np.ndarray:
    """HU -> [0, 1] float32 through the lung window (clipped)."""
    lo, hi = float(window[0]), float(window[1])
    out = (np.asarray(hu, dtype=np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def unit_to_hu(unit, window: Sequence[float] = DEFAULT_HU_WINDOW) -> np.ndarray:
    """Inverse of :func:`hu_to_unit` (values outside the window cannot come back)."""
    lo, hi = float(window[0]), float(window[1])
    return np.asarray(unit, dtype=np.float32) * np.float32(hi - lo) + np.float32(lo)


def gray8_to_unit(image) -> np.ndarray:
    """8-bit image (H, W) grey or (H, W, 3|4) colour -> (H, W) float32 in [0, 1]."""
    a = np.asarray(image)
    if a.ndim == 3:
        if a.shape[2] == 1:
            a = a[..., 0]
        elif a.shape[2] in (3, 4):
            rgb = a[..., :3].astype(np.float32)
            a = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        else:
            raise ValueError("unsupported channel count %d" % a.shape[2])
    if a.ndim != 2:
        raise ValueError("expected a 2D image, got shape %s" % (a.shape,))
    if a.dtype == np.uint16 or (a.dtype.kind in "iu" and a.max(initial=0) > 255):
        raise ValueError("expected an 8-bit image, got values up to %s" % a.max())
    return np.clip(a.astype(np.float32) / np.float32(255.0), 0.0, 1.0)


def load_gray8(path) -> np.ndarray:
    """Read a PNG/JPG (any mode) as (H, W) float32 unit image (shared by training and predict)."""
    from PIL import Image  # local: PIL is only needed for 2D files

    with Image.open(path) as im:
        im.load()
        if im.mode.startswith("I") or im.mode == "F":
            raise ValueError("%s is not an 8-bit image (mode %s)" % (path, im.mode))
        if im.mode == "LA":
            im = im.convert("L")
        elif im.mode not in ("L", "RGB", "RGBA"):
            im = im.convert("RGB")
        return gray8_to_unit(np.asarray(im))


# --------------------------------------------------------------------------- geometry

@dataclass
class SliceGeometry:
    """A square box in input-pixel coordinates and the model grid it is resized to.

    ``row0, col0`` is the box's top-left corner (may be negative), ``side`` its edge length
    in input pixels; the box may reach past ``in_shape`` (filled with 0 there).
    """

    in_shape: Tuple[int, int]  # (rows, cols) of the input slice
    row0: int
    col0: int
    side: int
    input_size: int = DEFAULT_INPUT_SIZE

    @property
    def scale(self) -> float:
        """Input pixels per model pixel."""
        return self.side / float(self.input_size)

    def to_dict(self) -> dict:
        return {"in_shape": list(self.in_shape), "row0": self.row0, "col0": self.col0,
                "side": self.side, "input_size": self.input_size}

    # -- points / boxes
    def model_to_input_xy(self, x, y):
        """Continuous model-input (x=col, y=row) -> continuous input (col, row)."""
        s = self.scale
        return (np.asarray(x, dtype=np.float64) * s + self.col0,
                np.asarray(y, dtype=np.float64) * s + self.row0)

    def input_to_model_xy(self, col, row):
        s = self.scale
        return ((np.asarray(col, dtype=np.float64) - self.col0) / s,
                (np.asarray(row, dtype=np.float64) - self.row0) / s)

    # -- images
    def _crop_padded(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, side, side), zero outside the image."""
        h, w = self.in_shape
        r0, c0, s = self.row0, self.col0, self.side
        rr0, rr1 = max(r0, 0), min(r0 + s, h)
        cc0, cc1 = max(c0, 0), min(c0 + s, w)
        if rr0 == r0 and cc0 == c0 and rr1 == r0 + s and cc1 == c0 + s:
            return images[..., r0:r0 + s, c0:c0 + s]
        out = images.new_zeros(images.shape[:-2] + (s, s))
        if rr1 > rr0 and cc1 > cc0:
            out[..., rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = images[..., rr0:rr1, cc0:cc1]
        return out

    def to_model(self, images, mode: str = "bilinear") -> torch.Tensor:
        """Unit images (H, W), (N, H, W) or (N, C, H, W) -> (N, C, S, S) float32.

        ``mode="nearest"`` is for label maps; "area"-like antialiasing is used when shrinking
        so thin structures survive consistently in training and inference.
        """
        t = torch.as_tensor(images)
        if t.dim() == 2:
            t = t[None, None]
        elif t.dim() == 3:
            t = t[:, None]
        t = t.float()
        if tuple(t.shape[-2:]) != tuple(self.in_shape):
            raise ValueError("image shape %s does not match geometry %s"
                             % (tuple(t.shape[-2:]), self.in_shape))
        box = self._crop_padded(t)
        size = (self.input_size, self.input_size)
        if self.side == self.input_size:
            return box.contiguous()
        if mode == "nearest":
            return F.interpolate(box, size=size, mode="nearest-exact")
        return F.interpolate(box, size=size, mode="bilinear", align_corners=False,
                             antialias=self.side > self.input_size)

    def _on_box(self, outputs, mode: str):
        t = torch.as_tensor(outputs)
        squeeze = t.dim() == 2
        if t.dim() == 2:
            t = t[None, None]
        elif t.dim() == 3:
            t = t[:, None]
        t = t.float()
        s = self.side
        if s != self.input_size:
            if mode == "nearest":
                t = F.interpolate(t, size=(s, s), mode="nearest-exact")
            else:
                t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False)
        return t, squeeze

    def box_on_input(self) -> Tuple[slice, slice]:
        """(rows, cols) of the input grid the square box covers (clipped to the image)."""
        h, w = self.in_shape
        r0, c0, s = self.row0, self.col0, self.side
        return slice(max(r0, 0), min(r0 + s, h)), slice(max(c0, 0), min(c0 + s, w))

    def to_input_box(self, outputs, mode: str = "bilinear") -> torch.Tensor:
        """Model-grid maps (N, C, S, S) -> (N, C, rows, cols) on the part of the input grid the
        box covers (:meth:`box_on_input`): :meth:`to_input` cropped there, without building the
        rest of the image."""
        t, _ = self._on_box(outputs, mode)
        rows, cols = self.box_on_input()
        r0, c0 = self.row0, self.col0
        return t[..., rows.start - r0:rows.stop - r0, cols.start - c0:cols.stop - c0]

    def to_input(self, outputs, fill: float = 0.0, mode: str = "bilinear") -> torch.Tensor:
        """Model-grid maps (N, C, S, S) -> (N, C, H, W) on the input grid; ``fill`` outside the box."""
        t, squeeze = self._on_box(outputs, mode)
        s = self.side
        h, w = self.in_shape
        out = t.new_full(t.shape[:-2] + (h, w), float(fill))
        r0, c0 = self.row0, self.col0
        rr0, rr1 = max(r0, 0), min(r0 + s, h)
        cc0, cc1 = max(c0, 0), min(c0 + s, w)
        if rr1 > rr0 and cc1 > cc0:
            out[..., rr0:rr1, cc0:cc1] = t[..., rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0]
        return out[0, 0] if squeeze else out


def square_box(r0: int, r1: int, c0: int, c1: int) -> Tuple[int, int, int]:
    """Smallest square (row0, col0, side) centred on the half-open box [r0,r1) x [c0,c1)."""
    side = int(max(r1 - r0, c1 - c0, 1))
    row0 = int(round((r0 + r1 - side) / 2.0))
    col0 = int(round((c0 + c1 - side) / 2.0))
    return row0, col0, side


def geometry_for_image(shape, input_size: int = DEFAULT_INPUT_SIZE,
                       box: Optional[Tuple[int, int, int, int]] = None) -> SliceGeometry:
    """Geometry for a 2D slice: the whole image (or ``box`` = r0, r1, c0, c1) made square."""
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError("empty image shape %s" % (tuple(shape),))
    r0, r1, c0, c1 = box if box is not None else (0, h, 0, w)
    row0, col0, side = square_box(r0, r1, c0, c1)
    return SliceGeometry((h, w), row0, col0, side, int(input_size))


# --------------------------------------------------------------------------- lung region

@dataclass
class LungRegion:
    """Where the lungs are in a (K, H, W) HU volume: one in-plane box and the slices to analyse."""

    box: Tuple[int, int, int, int]  # r0, r1, c0, c1 (half-open), in-plane, margin included
    slices: np.ndarray  # sorted k indices that bear lung (margin included)
    found: bool = True  # False: nothing lung-like found, whole volume used
    lung_area_mm2: np.ndarray = field(default_factory=lambda: np.zeros(0))


def find_lung_region(volume_hu: np.ndarray, spacing_ijk: Sequence[float] = (1.0, 1.0, 1.0),
                     margin_mm: float = 10.0, min_area_mm2: float = 400.0) -> LungRegion:
    """Lung bounding box and lung-bearing slices of an axial (K, H, W) HU volume.

    Works on a subsampled copy (every 4th pixel in-plane) because a bounding box does not need
    full resolution: lung is air (< -400 HU) enclosed by the body (the largest non-air component,
    holes filled), with components under ``min_area_mm2 / 8`` dropped (bowel gas, noise). Slices bearing
    more than ``min_area_mm2`` of it, plus ``margin_mm`` above and below, are analysed. Falls back
    to the whole volume when nothing qualifies, so an odd scan is analysed rather than skipped.
    """
    from scipy import ndimage

    vol = np.asarray(volume_hu)
    if vol.ndim != 3:
        raise ValueError("expected a (K, H, W) volume, got shape %s" % (vol.shape,))
    k_n, h, w = vol.shape
    si, sj, sk = (float(v) for v in spacing_ijk)
    step = 4 if min(h, w) >= 128 else 1
    sub = vol[:, ::step, ::step]
    air = sub < -400
    px_mm2 = si * sj * step * step
    areas = np.zeros(k_n)
    rows = np.zeros(sub.shape[1], bool)
    cols = np.zeros(sub.shape[2], bool)
    struct = ndimage.generate_binary_structure(2, 1)
    min_comp = max(1, int(min_area_mm2 / 8.0 / px_mm2))
    masks = np.zeros_like(air)
    for k in range(k_n):
        # The body is the largest non-air component with its holes filled; lungs are the air
        # inside it. That excludes the scanner table and the air around and beneath it.
        solid, n_solid = ndimage.label(~air[k], structure=struct)
        if n_solid == 0:
            continue
        sizes = np.bincount(solid.ravel())
        sizes[0] = 0
        body = ndimage.binary_fill_holes(solid == int(np.argmax(sizes)))
        lab, n = ndimage.label(air[k] & body, structure=struct)
        if n == 0:
            continue
        counts = np.bincount(lab.ravel(), minlength=n + 1)
        keep = counts >= min_comp
        keep[0] = False
        m = keep[lab]
        masks[k] = m
        areas[k] = m.sum() * px_mm2
    lung_k = np.nonzero(areas >= min_area_mm2)[0]
    if lung_k.size == 0:
        return LungRegion((0, h, 0, w), np.arange(k_n), False, areas)
    m = masks[lung_k].any(axis=0)
    rows = np.nonzero(m.any(axis=1))[0]
    cols = np.nonzero(m.any(axis=0))[0]
    mr = int(np.ceil(margin_mm / sj))
    mc = int(np.ceil(margin_mm / si))
    r0 = max(0, rows[0] * step - mr)
    r1 = min(h, (rows[-1] + 1) * step + mr)
    c0 = max(0, cols[0] * step - mc)
    c1 = min(w, (cols[-1] + 1) * step + mc)
    mk = int(np.ceil(margin_mm / sk))
    k0 = max(0, int(lung_k[0]) - mk)
    k1 = min(k_n, int(lung_k[-1]) + 1 + mk)
    return LungRegion((int(r0), int(r1), int(c0), int(c1)), np.arange(k0, k1), True, areas)


def geometry_for_volume(volume_hu: np.ndarray, spacing_ijk: Sequence[float],
                        representation: Optional[Representation] = None):
    """(SliceGeometry, LungRegion) for an axial HU volume under ``representation``."""
    rep = representation or Representation()
    k_n, h, w = np.asarray(volume_hu).shape
    if rep.volume_crop == "lung":
        region = find_lung_region(volume_hu, spacing_ijk, rep.crop_margin_mm)
    elif rep.volume_crop == "none":
        region = LungRegion((0, h, 0, w), np.arange(k_n), False)
    else:
        raise ValueError("unknown volume_crop %r" % rep.volume_crop)
    return geometry_for_image((h, w), rep.input_size, region.box), region


def hu_slices_to_model(slices_hu, geometry: SliceGeometry,
                       representation: Optional[Representation] = None) -> torch.Tensor:
    """(N, H, W) HU slices -> (N, 1, S, S) model input (windowed, boxed, resized)."""
    rep = representation or Representation()
    unit = hu_to_unit(slices_hu, rep.hu_window)
    return geometry.to_model(torch.from_numpy(np.ascontiguousarray(unit)))


def gray8_to_model(image_unit: np.ndarray, representation: Optional[Representation] = None):
    """(H, W) unit image -> ((1, 1, S, S) model input, SliceGeometry)."""
    rep = representation or Representation()
    geom = geometry_for_image(image_unit.shape, rep.input_size)
    return geom.to_model(torch.from_numpy(np.ascontiguousarray(image_unit))), geom
