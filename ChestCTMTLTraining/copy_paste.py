"""Copy-paste augmentation: training-split LIDC nodule VOIs pasted into the lungs of normal slices.

The VOIs (``lidc_nodule_vois``) give ~800 real nodules with masks, but only as small crops; the
normal slices of LIDC, IQ-OTH, COVID-CT-MD and SARS-CoV-2 give lung context from four scanners
and windows, but no nodules. Pasting one into the other makes nodule segmentation + detection
targets in every source's look, so a nodule is not a property of one source.

One paste (:func:`paste_nodule`), on the model grid, before the usual augmentation (so flips,
turns and intensity jitter apply to host and nodule alike):

* **size**: the VOI patch is resized by (VOI mm per pixel) / (host mm per pixel) times a jitter
  (``scale``); HU hosts know their pixel size (spacing x box side / input size), 8-bit hosts
  have none and use the ``mm_per_pixel`` of their host entry (see docs/training/copy_paste.md
  for how the defaults were measured);
* **intensity**: the VOI is in the HU representation (lung window -> [0, 1]), like HU hosts, so
  for them it is used as is; for an 8-bit host it is mapped linearly so that lung parenchyma
  (-850 HU) lands on the host's lung level and soft tissue (+40 HU) on its soft-tissue level
  (:mod:`.slice_lungs`), clipped to [0, 1] like the host's window clips; noise is added to
  reach the host's soft-tissue noise (IQ-OTH is speckled, the VOIs are not);
* **place**: the nodule mask plus its blend margin lies wholly inside the host's lung mask
  (:func:`.slice_lungs.slice_lungs`) and off earlier pastes, at most 10 % of it on bright
  structures there (vessels, hilum: a nodule may touch them, not cover them); positions
  drawn uniformly;
* **blend**: alpha = 1 on the nodule mask, falling linearly to 0 over ``blend_px`` pixels
  outside it (a distance transform), so the VOI's own surroundings fade into the host and no
  square edge remains; pixels farther out are untouched;
* **targets**: the mask (>= 0.5 of the resized VOI mask) is added to the host's nodule-mass
  mask, which makes that type annotated on the sample; boxes come from its components as for
  every sample (:func:`.batching.boxes_from_mask`).

Class target: a pasted sample has **no class** (-1; classification gets no loss from it). A
pasted slice is not a cancer case: the donors include benign nodules, and a "cancer" label on
an 8-bit normal slice with a pasted blob would teach the classifier to find pasting (or the
host source) instead of disease; keeping the host's "non-COVID" would teach it to ignore
nodules. With no class, the paste only teaches what it shows truly: where the nodule is.

Donors come only from the training split of the donor source (a val-split set is refused), so
the VOI patients held out for validation are never pasted. Hosts are the training-split slices
of the named sources that are known normal: class non-COVID, no lesion in their masks, not a
pneumonia's infected slice, and a lung found by the 2D rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ChestCTMTLLib.representation import hu_to_unit
from ChestCTMTLLib.results import CLASS_NAMES, LESION_TYPES

from .hard_negatives import checked_generator
from .slice_lungs import SliceLungs, largest_component, slice_lungs
from .sources.base import SampleSet

LUNG_HU = -850.0
TISSUE_HU = 40.0


@dataclass
class HostSpec:
    source: str
    mm_per_pixel: Optional[float] = None  # model-grid pixel size for sources without spacing
    nodule_free: bool = False  # no nodule masks, but slices assumed nodule-free (SARS non-COVID)
    soft_tissue_window: bool = False  # lungs and fat both black (IQ-OTH): see slice_lungs
    weight: float = 1.0  # hosts are drawn by source in proportion to it, then uniformly

    @classmethod
    def from_dict(cls, d) -> "HostSpec":
        if isinstance(d, str):
            return cls(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown or "source" not in d:
            raise ValueError("copy_paste host %s: needs source; unknown keys %s" % (d, sorted(unknown)))
        mm = d.get("mm_per_pixel")
        out = cls(str(d["source"]), None if mm is None else float(mm), bool(d.get("nodule_free", False)),
                  bool(d.get("soft_tissue_window", False)), float(d.get("weight", 1.0)))
        if out.weight <= 0:
            raise ValueError("copy_paste host %s: weight must be > 0" % out.source)
        return out


@dataclass
class CopyPasteConfig:
    """The ``copy_paste:`` config section (defaults here; unknown keys are refused)."""

    enabled: bool = False
    p: float = 0.15  # share of all training samples that are pasted normal slices
    donors: str = "lidc-vois"
    hosts: List[HostSpec] = field(default_factory=list)
    max_nodules: int = 2
    diameter_mm: Tuple[float, float] = (3.0, 40.0)
    scale: Tuple[float, float] = (0.8, 1.25)
    blend_px: float = 3.0
    min_mask_px: int = 6
    lesion_type: str = "nodule-mass"

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "CopyPasteConfig":
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError("copy_paste: unknown keys %s (known: %s)" % (sorted(unknown), sorted(known)))
        if "hosts" in d:
            d["hosts"] = [HostSpec.from_dict(h) for h in d["hosts"] or []]
        for k in ("diameter_mm", "scale"):
            if k in d:
                lo, hi = (float(v) for v in d[k])
                if not 0 < lo <= hi:
                    raise ValueError("copy_paste.%s must be [low, high] with 0 < low <= high" % k)
                d[k] = (lo, hi)
        return checked_generator(cls(**d), "copy_paste", "hosts")


# --------------------------------------------------------------------------- one paste

def host_mm_per_pixel(meta: dict, assumed: Optional[float]) -> Optional[float]:
    """Model-grid pixel size of a host slice: from its spacing and box, else the assumption."""
    if meta and meta.get("spacing") and meta.get("geometry"):
        g = meta["geometry"]
        return float(np.mean(meta["spacing"][:2])) * float(g["side"]) / float(g["input_size"])
    return assumed


def is_hu_host(meta: dict) -> bool:
    return bool(meta and meta.get("spacing"))


def map_intensity(patch: np.ndarray, lungs: SliceLungs, hu_window) -> np.ndarray:
    """VOI unit values (HU representation) -> the 8-bit host's window (two-level linear map)."""
    a0, a1 = (float(v) for v in hu_to_unit(np.array([LUNG_HU, TISSUE_HU]), hu_window))
    gain = (lungs.tissue_level - lungs.lung_level) / (a1 - a0)
    return np.clip(lungs.lung_level + (patch - a0) * gain, 0.0, 1.0)


def resize(a: np.ndarray, n: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None]
    return F.interpolate(t, size=(n, n), mode="bilinear", align_corners=False,
                         antialias=n < a.shape[-1])[0, 0].numpy()


def blend_alpha(mask: np.ndarray, blend_px: float) -> np.ndarray:
    """1 on ``mask``, linearly down to 0 at ``blend_px`` pixels outside it."""
    from scipy import ndimage

    if blend_px <= 0:
        return mask.astype(np.float32)
    d = ndimage.distance_transform_edt(~mask)
    return np.clip(1.0 - d / float(blend_px), 0.0, 1.0).astype(np.float32)


def valid_positions(allowed: np.ndarray, footprint: np.ndarray, soft: Optional[np.ndarray] = None,
                    soft_fraction: float = 0.1) -> np.ndarray:
    """(rows, cols) top-left corners where ``footprint`` lies wholly on ``allowed`` and, when
    ``soft`` is given, at most ``soft_fraction`` of it off ``soft``."""
    from scipy.signal import fftconvolve

    h, w = footprint.shape
    if h > allowed.shape[0] or w > allowed.shape[1]:
        return np.zeros((0, 2), int)
    kernel = footprint[::-1, ::-1].astype(np.float32)
    ok = fftconvolve((~allowed).astype(np.float32), kernel, mode="valid") < 0.5
    if soft is not None:
        off = fftconvolve((~soft).astype(np.float32), kernel, mode="valid")
        ok &= off < soft_fraction * float(footprint.sum()) + 0.5
    return np.argwhere(ok)


@dataclass
class Paste:
    row: int
    col: int
    mask: np.ndarray  # (S, S) bool, the pasted nodule
    footprint: np.ndarray  # (S, S) bool, where alpha > 0
    box: Tuple[float, float, float, float]  # x0, y0, x1, y1 (boxes_from_mask convention)
    donor: int


def paste_nodule(image: np.ndarray, allowed: np.ndarray, lungs: SliceLungs, patch: np.ndarray,
                 patch_mask: np.ndarray, factor: float, rng: np.random.Generator, *, hu_host: bool,
                 hu_window, blend_px: float = 3.0, min_mask_px: int = 6, donor: int = -1):
    """Paste one VOI patch into ``image`` in place; returns a :class:`Paste` or None (no room/too small).

    ``patch`` unit (HU representation), ``patch_mask`` 0..255 or [0, 1], ``factor`` = VOI mm per
    pixel / host mm per pixel (jitter included), ``allowed`` where the footprint may go.
    """
    n = max(2, int(round(patch.shape[-1] * factor)))
    m = resize(patch_mask.astype(np.float32) / (255.0 if patch_mask.max() > 1 else 1.0), n) >= 0.5
    m = largest_component(m)  # one nodule, one box (a shrunk lobulated mask may fall apart)
    if m.sum() < min_mask_px:
        return None
    rows, cols = np.nonzero(m)
    pad = int(np.ceil(blend_px))
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + 1 + pad, n)
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + 1 + pad, n)
    m = np.pad(m[r0:r1, c0:c1], pad)  # the nodule with room for its blend margin
    p = np.pad(resize(patch, n)[r0:r1, c0:c1], pad, mode="edge")
    alpha = blend_alpha(m, blend_px)
    foot = alpha > 0
    pos = valid_positions(allowed, foot, lungs.parenchyma)
    if not len(pos):
        return None
    r, c = (int(v) for v in pos[int(rng.integers(len(pos)))])
    if not hu_host:
        p = map_intensity(p, lungs, hu_window)
        extra = lungs.noise  # the resampled VOI is far smoother than 8-bit hosts
        if extra > 0:  # the host's soft-tissue noise, in proportion to how tissue-like a pixel is
            span = max(lungs.tissue_level - lungs.lung_level, 1e-3)
            w = np.clip((p - lungs.lung_level) / span, 0, 1)
            p = np.clip(p + rng.standard_normal(p.shape).astype(np.float32) * extra * w, 0, 1)
    h, w_ = foot.shape
    win = image[r:r + h, c:c + w_]
    win[foot] = (1 - alpha[foot]) * win[foot] + alpha[foot] * p[foot]
    full_m = np.zeros(image.shape, bool)
    full_m[r:r + h, c:c + w_] = m
    full_f = np.zeros(image.shape, bool)
    full_f[r:r + h, c:c + w_] = foot
    rr, cc = np.nonzero(full_m)
    box = (float(cc.min()), float(rr.min()), float(cc.max() + 1), float(rr.max() + 1))
    return Paste(r, c, full_m, full_f, box, donor)


# --------------------------------------------------------------------------- the pseudo-source

class CopyPaste:
    """Draws pasted normal slices; used by :class:`.batching.MixedSampler` as one more source."""

    name = "copy-paste"

    @property
    def p(self) -> float:
        return float(self.cfg.p)

    def __init__(self, cfg: CopyPasteConfig, sets: Sequence[SampleSet], hu_window,
                 lesion_types: Sequence[str] = LESION_TYPES):
        self.cfg = cfg
        self.hu_window = tuple(float(v) for v in hu_window)
        self.t = list(lesion_types).index(cfg.lesion_type)
        by_name = {s.name: s for s in sets}
        if cfg.donors not in by_name:
            raise ValueError("copy_paste.donors %r is not a training source (have %s)" % (cfg.donors, sorted(by_name)))
        donor = by_name[cfg.donors]
        if donor.split != "train":
            raise ValueError("copy_paste donors must be the training split, got %r" % donor.split)
        if donor.kind != "patch" or not donor.meta or "mm_per_pixel" not in donor.meta[0]:
            raise ValueError("copy_paste donors %r must be VOI patches with meta mm_per_pixel" % cfg.donors)
        lo, hi = cfg.diameter_mm
        area = donor.masks[:, self.t].reshape(len(donor), -1).astype(np.float32).sum(axis=1) / 255.0
        self.donor = donor
        self.donors = np.array([i for i, mt in enumerate(donor.meta)
                                if lo <= float(mt.get("diameter_mm", 0)) <= hi and area[i] > 0], int)
        if not len(self.donors):
            raise ValueError("copy_paste: no donor VOI with diameter in %s mm" % (cfg.diameter_mm,))
        self.hosts: List[Tuple[SampleSet, int, HostSpec]] = []
        nc = CLASS_NAMES.index("non-covid")
        for spec in cfg.hosts:
            if spec.source not in by_name:
                raise ValueError("copy_paste host %r is not a training source (have %s)" % (spec.source, sorted(by_name)))
            s = by_name[spec.source]
            if s.split != "train":
                raise ValueError("copy_paste hosts must be the training split, got %r" % s.split)
            for i in range(len(s)):
                mt = s.meta[i] if s.meta else {}
                if s.classes[i] != nc or mt.get("infection") or mt.get("hard_negative") or s.masks[i].any():
                    continue
                if not (s.mask_present[i, self.t] or spec.nodule_free):
                    continue
                if host_mm_per_pixel(mt, spec.mm_per_pixel) is None:
                    raise ValueError("copy_paste host %r has no pixel size: give mm_per_pixel" % spec.source)
                self.hosts.append((s, i, spec))
        if not self.hosts:
            raise ValueError("copy_paste: no normal host slice in %s" % [h.source for h in cfg.hosts])
        # by source first (SARS-CoV-2 alone has ~1,000 normal slices, LIDC-0001 ~100), then uniformly
        self.by_source = [np.array([k for k, h in enumerate(self.hosts) if h[2] is spec], int) for spec in cfg.hosts]
        w = np.array([spec.weight if len(b) else 0.0 for spec, b in zip(cfg.hosts, self.by_source)])
        self.source_p = w / w.sum()
        self._lungs: Dict[Tuple[str, int], tuple] = {}

    def lungs_of(self, s: SampleSet, i: int, spec: HostSpec) -> SliceLungs:
        """The host's lungs, computed once (masks kept bit-packed: thousands of hosts per worker)."""
        key = (s.name, i)
        if key not in self._lungs:
            lungs = slice_lungs(s.images[i].astype(np.float32), spec.soft_tissue_window)
            levels = (lungs.lung_level, lungs.tissue_level, lungs.threshold, lungs.noise)
            self._lungs[key] = (levels, np.packbits(lungs.mask), np.packbits(lungs.parenchyma))
        levels, m, p = self._lungs[key]
        n = s.images.shape[-1]
        return SliceLungs(np.unpackbits(m, count=n * n).reshape(n, n).astype(bool), *levels,
                          np.unpackbits(p, count=n * n).reshape(n, n).astype(bool))

    def donor_patch(self, k: int, rng) -> Tuple[np.ndarray, np.ndarray]:
        """Donor ``k``'s patch and mask, turned by a random multiple of 90 degrees and flipped."""
        x = self.donor.images[k].astype(np.float32)
        m = self.donor.masks[k, self.t]
        q = int(rng.integers(4))
        x, m = np.rot90(x, q), np.rot90(m, q)
        if rng.random() < 0.5:
            x, m = x[:, ::-1], m[:, ::-1]
        return np.ascontiguousarray(x), np.ascontiguousarray(m)

    def draw(self, rng: np.random.Generator, tries: int = 8) -> dict:
        """One pasted host: image (S,S), masks (T,S,S) in [0,1], cls -1, present, weight, pastes."""
        for _ in range(tries):
            pool = self.by_source[int(rng.choice(len(self.by_source), p=self.source_p))]
            s, i, spec = self.hosts[int(pool[int(rng.integers(len(pool)))])]
            lungs = self.lungs_of(s, i, spec)
            if lungs.found:
                break
        image = s.images[i].astype(np.float32).copy()
        masks = s.masks[i].astype(np.float32) / 255.0
        present = s.mask_present[i].copy()
        mt = s.meta[i] if s.meta else {}
        host_mm = host_mm_per_pixel(mt, spec.mm_per_pixel)
        allowed = lungs.mask.copy()
        pastes: List[Paste] = []
        want = int(rng.integers(1, self.cfg.max_nodules + 1))
        for _ in range(want * 3):
            if len(pastes) >= want or not lungs.found:
                break
            k = int(self.donors[int(rng.integers(len(self.donors)))])
            patch, pmask = self.donor_patch(k, rng)
            factor = float(self.donor.meta[k]["mm_per_pixel"]) / host_mm * float(rng.uniform(*self.cfg.scale))
            got = paste_nodule(image, allowed, lungs, patch, pmask, factor, rng, hu_host=is_hu_host(mt),
                               hu_window=self.hu_window, blend_px=self.cfg.blend_px,
                               min_mask_px=self.cfg.min_mask_px, donor=k)
            if got is not None:
                pastes.append(got)
                allowed &= ~got.footprint
                masks[self.t] = np.maximum(masks[self.t], got.mask)
        if pastes:
            present[self.t] = True
        return {"image": image, "masks": masks, "cls": -1 if pastes else int(s.classes[i]),
                "present": present, "weight": float(s.seg_weight[i]), "pastes": pastes,
                "host": (s.name, i), "lungs": lungs}


def generated_sources(cfg: dict, sets: Sequence[SampleSet], hu_window,
                      lesion_types: Sequence[str] = LESION_TYPES) -> list:
    """The config's enabled generators (copy-paste, hard negatives) over its training ``sets``."""
    from .hard_negatives import HardNegativeConfig, HardNegatives

    out = []
    cp = CopyPasteConfig.from_dict(cfg.get("copy_paste"))
    if cp.enabled and cp.p > 0:
        out.append(CopyPaste(cp, sets, hu_window, lesion_types))
    hn = HardNegativeConfig.from_dict(cfg.get("hard_negatives"))
    if hn.enabled and hn.p > 0:
        out.append(HardNegatives(hn, sets, hu_window, len(lesion_types)))
    return out
