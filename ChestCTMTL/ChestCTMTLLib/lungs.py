"""Left and right lung as a 3D mask, from Hounsfield units alone.

Why in the core: a 2D model trained on lung-cropped slices has never seen the heart, the
mediastinum or bowel gas labelled "not lung", so it fires there; everything after the
network (findings, zones, the verdict, the evaluation) asks "is this inside a lung?" and this
module answers it for any scanner, slice thickness and orientation, without a second model.

Method (classic intensity-based lung segmentation, e.g. Hu, Hoffman & Reinhardt, IEEE TMI
2001, on a grid of about 2 mm in-plane and >= 2 mm between slices to keep it fast):

1. **body**: everything enclosed by tissue (>= -400 HU), slice by slice - the air outside
   the patient and under the table reaches the image border, so it is never "lung";
2. **air inside the body** (< -400 HU) labelled in 3D (6-connectivity); the lungs are the
   large components (>= ``min_lung_ml``, >= 10 % of the largest) that reach the upper half of
   the largest one: bowel and stomach gas lie below the diaphragm dome, so they never do; an
   opening (2 voxels) first cuts gas that touches a lung base through the thin diaphragm;
3. **airways**: the trachea is found in the most cranial slices as a small, round, very dark
   (median < -900 HU) component near the body's midline and followed caudally slice by slice
   while its cross-sections stay small (it and the main bronchi are removed; once a bronchus
   enters the lung its cross-section merges with parenchyma and tracking stops);
4. **left / right**: two large components after removing the airways are the two lungs; when
   the lungs touch (anterior junction line) the component is eroded (on a 2x coarser grid) until
   it falls apart and every voxel goes to the nearer eroded core;
5. **filling**: holes filled per slice and a small in-plane closing, so vessels, airway walls
   and lesions enclosed by lung are lung; :func:`grow_into_lesions` adds the model's own
   lesion voxels that touch a lung (dense consolidation, juxtapleural nodules).

Canonical axial arrays only (:mod:`.orientation`): (slice, row, col) with slices running
inferior -> superior and columns from the patient's right to left, so "right lung" is the one
at the smaller column index. scipy.ndimage only: it runs inside Slicer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

#: Label values of :class:`LungMask.labels`.
RIGHT, LEFT = 1, 2
LUNG_NAMES = {RIGHT: "right lung", LEFT: "left lung"}

AIR_HU_MAX = -400.0
TRACHEA_MEAN_HU_MAX = -900.0


@dataclass
class LungMask:
    """Lung labels on a canonical (K, H, W) grid: 0 outside, :data:`RIGHT`, :data:`LEFT`."""

    labels: np.ndarray  # uint8 (K, H, W)
    spacing: Tuple[float, float, float]  # mm along (slice, row, col)
    airway_ml: float = 0.0  # removed trachea / main bronchi
    split: str = "separate"  # "separate" | "eroded" | "single" (one lung only) | "none"
    bbox: Optional[Tuple[slice, slice, slice]] = None  # of both lungs, as segmented

    @property
    def found(self) -> bool:
        return self.split != "none"

    def _stats(self) -> dict:
        """Voxel counts and slice extents per label, computed once (labels are final by then)."""
        cached = self.__dict__.get("_cache")
        if cached is None:
            per_slice = _per_slice_label_counts(self.labels)
            cached = {"counts": per_slice.sum(axis=0) if per_slice.size else np.zeros(3, np.int64),
                      "per_slice": per_slice}
            self.__dict__["_cache"] = cached
        return cached

    def invalidate(self) -> None:
        """Call after editing ``labels`` in place (e.g. :func:`grow_into_lesions`)."""
        self.__dict__.pop("_cache", None)

    def volume_ml(self) -> Dict[str, float]:
        voxel_ml = float(np.prod(self.spacing)) / 1000.0
        counts = self._stats()["counts"]
        return {LUNG_NAMES[RIGHT]: float(counts[RIGHT] * voxel_ml),
                LUNG_NAMES[LEFT]: float(counts[LEFT] * voxel_ml)}

    def per_slice_counts(self) -> np.ndarray:
        """(K, 3) voxels of label 0, RIGHT, LEFT on each slice (computed once)."""
        return self._stats()["per_slice"]

    def slice_area(self) -> np.ndarray:
        """Lung voxels (both lungs) per slice."""
        ps = self._stats()["per_slice"]
        return ps[:, 1] + ps[:, 2] if ps.size else np.zeros(0, np.int64)

    def slice_extent(self, label: int) -> Optional[Tuple[int, int]]:
        """(first, last) slice index bearing ``label``; None when absent."""
        ks = np.nonzero(self._stats()["per_slice"][:, label])[0]
        return (int(ks[0]), int(ks[-1])) if ks.size else None

    def zone_slices(self, label: int):
        """[(zone, k0, k1)] - the lower, middle and upper third of lung ``label``'s slices
        (half-open, canonical slices run inferior -> superior); [] when the lung is absent."""
        ext = self.slice_extent(label)
        if ext is None:
            return []
        edges = np.linspace(ext[0], ext[1] + 1, 4)
        return [(zone, int(round(edges[i])), int(round(edges[i + 1])))
                for i, zone in enumerate(("lower", "middle", "upper"))]

    def zone_of(self, label: int, k: float) -> str:
        """The zone (:meth:`zone_slices`) of lung ``label`` holding slice ``k`` (the nearest one
        for a slice beyond the lung; "middle" when the lung is absent)."""
        zones = self.zone_slices(label)
        if not zones:
            return "middle"
        k = int(round(float(k)))
        for zone, k0, k1 in zones:
            if k0 <= k < k1:
                return zone
        return zones[0][0] if k < zones[0][1] else zones[-1][0]


# --------------------------------------------------------------------------- grid helpers
def _per_slice_label_counts(labels: np.ndarray, chunk: int = 32) -> np.ndarray:
    """(K, 3) voxels of label 0, RIGHT, LEFT on each slice: three byte comparisons per slab,
    several times faster than a bincount per slice (which widens every voxel to int64)."""
    out = np.zeros((labels.shape[0], 3), np.int64)
    for k0 in range(0, labels.shape[0], chunk):
        part = labels[k0:k0 + chunk]
        for value in (0, RIGHT, LEFT):
            out[k0:k0 + len(part), value] = np.count_nonzero(part == value, axis=(1, 2))
    return out


def _steps(spacing: Sequence[float]) -> Tuple[int, int]:
    s_mm, r_mm, c_mm = (float(v) for v in spacing)
    step_xy = max(1, int(round(1.9 / max(min(r_mm, c_mm), 1e-3))))
    step_z = max(1, int(round(2.0 / max(s_mm, 1e-3))))
    return step_z, step_xy


def _downsample(hu: np.ndarray, step_z: int, step_xy: int) -> np.ndarray:
    """Mean of step_xy x step_xy in-plane blocks (noise-robust), every step_z-th slice."""
    v = hu[::step_z]
    if step_xy == 1:
        return np.asarray(v, dtype=np.float32)
    k, h, w = v.shape
    h2, w2 = h // step_xy, w // step_xy
    acc = np.zeros((k, h2, w2), dtype=np.float32)
    for a in range(step_xy):
        for b in range(step_xy):
            acc += v[:, a:h2 * step_xy:step_xy, b:w2 * step_xy:step_xy]
    acc /= float(step_xy * step_xy)
    return acc


def _upsample(labels: np.ndarray, shape, step_z: int, step_xy: int) -> np.ndarray:
    """Nearest-neighbour back to the full grid (edges beyond the coarse grid repeat the last)."""
    k, h, w = shape
    zi = np.minimum(np.arange(k) // step_z, labels.shape[0] - 1)
    ri = np.minimum(np.arange(h) // step_xy, labels.shape[1] - 1)
    ci = np.minimum(np.arange(w) // step_xy, labels.shape[2] - 1)
    out = np.empty(shape, dtype=np.uint8)
    rows = labels[:, ri][:, :, ci]
    out[:] = rows[zi]
    return out


def _fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Slice-wise hole filling of a 3D mask in one labelling pass (no z-connectivity)."""
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    lab, n = ndimage.label(~mask, structure=structure)
    if n == 0:
        return mask.copy()
    border = np.unique(np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(),
                                       lab[:, :, 0].ravel(), lab[:, :, -1].ravel()]))
    outside = np.zeros(n + 1, bool)
    outside[border] = True
    outside[0] = False
    return mask | ~outside[lab] & (lab > 0)


def _disk(radius: int) -> np.ndarray:
    r = int(max(1, radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r


# --------------------------------------------------------------------------- stages
def _lung_components(air: np.ndarray, voxel_ml: float, min_lung_ml: float) -> np.ndarray:
    """Keep the lung-like 3D air components (see module docstring, step 2)."""
    from scipy import ndimage

    lab, n = ndimage.label(air)
    if n == 0:
        return np.zeros(air.shape, bool)
    sizes = np.bincount(lab.ravel()).astype(np.float64) * voxel_ml
    sizes[0] = 0
    big = int(np.argmax(sizes))
    if sizes[big] < min_lung_ml:
        return np.zeros(air.shape, bool)
    large = np.nonzero(sizes >= max(min_lung_ml, 0.1 * sizes[big]))[0]
    objs = ndimage.find_objects(lab, max_label=int(large.max()))
    z0, z1 = objs[big - 1][0].start, objs[big - 1][0].stop - 1
    z_mid = 0.5 * (z0 + z1)
    keep = np.zeros(n + 1, bool)
    for i in large:
        if objs[i - 1][0].stop - 1 >= z_mid:  # canonical slices run inferior -> superior
            keep[i] = True
    return keep[lab]


def _airways(mask: np.ndarray, hu: np.ndarray, body: np.ndarray, spacing) -> np.ndarray:
    """Trachea and main bronchi: tracked from the most cranial slices down (step 3)."""
    from scipy import ndimage

    s_mm, r_mm, c_mm = spacing
    px_mm2 = r_mm * c_mm
    min_a, max_a = 50.0 / px_mm2, 700.0 / px_mm2  # 8 - 30 mm diameter
    airway = np.zeros(mask.shape, bool)
    ks = np.nonzero(mask.any(axis=(1, 2)))[0]
    if ks.size == 0:
        return airway
    k_top = int(ks[-1])
    seed = None
    # look for the trachea in the cranial 40 mm
    for k in range(k_top, max(int(ks[0]), k_top - int(math.ceil(40.0 / s_mm))) - 1, -1):
        cols = np.nonzero(body[k].any(axis=0))[0]
        if cols.size == 0:
            continue
        mid, width = 0.5 * (cols[0] + cols[-1]), float(cols[-1] - cols[0] + 1)
        lab, n = ndimage.label(mask[k])
        best = None
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            comp = lab[sl] == i
            area = float(comp.sum())
            if not (min_a <= area <= max_a):
                continue
            h, w = comp.shape
            if area < 0.45 * h * w or max(h, w) > 2.5 * min(h, w):
                continue  # not round
            rr, cc = np.nonzero(comp)
            if abs(cc.mean() + sl[1].start - mid) > 0.15 * width:
                continue
            if float(np.median(hu[k][sl][comp])) > TRACHEA_MEAN_HU_MAX:
                continue
            if best is None or area > best[0]:
                best = (area, lab == i)
        if best is not None:
            seed = (k, best[1])
            break
    if seed is None:
        return airway
    k, current = seed
    airway[k] = current
    grow = _disk(max(1, int(round(3.0 / min(r_mm, c_mm)))))
    for k in range(seed[0] - 1, int(ks[0]) - 1, -1):
        near = ndimage.binary_dilation(current, grow)
        lab, n = ndimage.label(mask[k])
        hit = np.unique(lab[near & (lab > 0)])
        nxt = np.zeros_like(current)
        for i in hit:
            comp = lab == i
            if comp.sum() <= max_a:
                nxt |= comp
        if not nxt.any():
            break
        airway[k] = nxt
        current = nxt
    return airway


def _split_left_right(mask: np.ndarray, voxel_ml: float, min_lung_ml: float) -> Tuple[np.ndarray, str]:
    """Label map RIGHT/LEFT from a lung mask (step 4)."""
    from scipy import ndimage

    out = np.zeros(mask.shape, np.uint8)
    lab, n = ndimage.label(mask)
    if n == 0:
        return out, "none"
    sizes = np.bincount(lab.ravel()).astype(np.float64)
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    total = sizes.sum()
    if n >= 2 and sizes[order[1]] >= 0.15 * sizes[order[0]] \
            and sizes[order[1]] * voxel_ml >= min_lung_ml:
        a, b = int(order[0]), int(order[1])
        split = "separate"
        seeds = np.zeros(mask.shape, np.uint8)
        seeds[lab == a] = 1
        seeds[lab == b] = 2
    else:
        # one component: erode (inside its bounding box) until it falls apart into two large
        # cores, then grow the cores back inside the mask, one voxel layer per step
        seeds = None
        bbox = ndimage.find_objects((lab == int(order[0])).astype(np.uint8))[0]
        sub = lab[bbox] == int(order[0])
        core = sub[:, ::2, ::2]  # the cores need no detail: a 2x coarser in-plane grid
        ball = ndimage.generate_binary_structure(3, 1)
        for _ in range(8):
            core = ndimage.binary_erosion(core, ball)
            if not core.any():
                break
            clab, cn = ndimage.label(core)
            if cn < 2:
                continue
            cs = np.bincount(clab.ravel()).astype(np.float64)
            cs[0] = 0
            co = np.argsort(cs)[::-1]
            if cs[co[1]] >= 0.15 * cs[co[0]]:
                seeds = np.zeros(core.shape, np.uint8)
                seeds[clab == co[0]] = 1
                seeds[clab == co[1]] = 2
                break
        if seeds is None:
            # a single lung (pneumonectomy, partial scan): its side is where it lies in the image
            cols = np.nonzero(mask.any(axis=(0, 1)))[0]
            side = RIGHT if 0.5 * (cols[0] + cols[-1]) < 0.5 * mask.shape[2] else LEFT
            out[mask] = side
            return out, "single"
        split = "eroded"
        # every voxel to the nearer core (distance transform on the coarse grid)
        _, idx = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
        nearest = seeds[idx[0], idx[1], idx[2]]
        del idx
        nearest = _upsample(nearest, sub.shape, 1, 2)
        full = np.zeros(mask.shape, np.uint8)
        full[bbox] = np.where(sub, nearest, 0)
        seeds = full
    # which seed is the right lung: the smaller mean column (columns run right -> left)
    cols = np.arange(mask.shape[2])
    mean_col = []
    for v in (1, 2):
        per_col = (seeds == v).sum(axis=(0, 1))
        mean_col.append(float((per_col * cols).sum() / max(1, per_col.sum())))
    right_v = 1 if mean_col[0] <= mean_col[1] else 2
    out[seeds == right_v] = RIGHT
    out[(seeds > 0) & (seeds != right_v)] = LEFT
    # other lung-bearing components (e.g. a lobe cut off by a fissure-level gap): nearer side
    rest = mask & (out == 0)
    if rest.any():
        mid = 0.5 * (mean_col[right_v - 1] + mean_col[2 - right_v])
        rlab, rn = ndimage.label(rest)
        for i, sl in enumerate(ndimage.find_objects(rlab), start=1):
            comp = rlab[sl] == i
            c = np.nonzero(comp)[2].mean() + sl[2].start
            out[sl][comp] = RIGHT if c < mid else LEFT
    return out, split


def _fill(labels: np.ndarray, spacing) -> np.ndarray:
    """Per lung: small in-plane closing and slice-wise hole filling (step 5)."""
    from scipy import ndimage

    _, r_mm, c_mm = spacing
    disk = _disk(int(round(4.0 / min(r_mm, c_mm))))
    structure = disk[None]
    out = np.zeros_like(labels)
    for v in (RIGHT, LEFT):
        m = labels == v
        if not m.any():
            continue
        ks = np.nonzero(m.any(axis=(1, 2)))[0]
        rs = np.nonzero(m.any(axis=(0, 2)))[0]
        cs = np.nonzero(m.any(axis=(0, 1)))[0]
        pad = disk.shape[0]
        r0, r1 = max(0, rs[0] - pad), min(m.shape[1], rs[-1] + 1 + pad)
        c0, c1 = max(0, cs[0] - pad), min(m.shape[2], cs[-1] + 1 + pad)
        sub = m[ks[0]:ks[-1] + 1, r0:r1, c0:c1]
        sub = _fill_holes_2d(ndimage.binary_closing(sub, structure))
        region = out[ks[0]:ks[-1] + 1, r0:r1, c0:c1]
        region[sub & (region == 0)] = v
    return out


# --------------------------------------------------------------------------- entry points
def segment_lungs(hu: np.ndarray, spacing: Sequence[float], min_lung_ml: float = 100.0) -> LungMask:
    """Right/left lung labels of a canonical axial HU volume (K, H, W), ``spacing`` (s, r, c) mm.

    Never raises on an unusual scan: when nothing lung-like is found the mask is empty and
    :attr:`LungMask.found` is False (callers then fall back to the whole analysed region).
    """
    vol = np.asarray(hu)
    if vol.ndim != 3:
        raise ValueError("expected a (K, H, W) volume, got shape %s" % (vol.shape,))
    spacing = tuple(float(v) for v in spacing)
    step_z, step_xy = _steps(spacing)
    small = _downsample(vol, step_z, step_xy)
    sp = (spacing[0] * step_z, spacing[1] * step_xy, spacing[2] * step_xy)
    voxel_ml = float(np.prod(sp)) / 1000.0
    air = small < AIR_HU_MAX
    # the body with everything it encloses (slice by slice); air outside the patient and
    # under the table reaches the image border, so it is not enclosed
    body = _fill_holes_2d(~air)
    air &= body
    cand = _lung_components(air, voxel_ml, min_lung_ml)
    if not cand.any():
        return LungMask(np.zeros(vol.shape, np.uint8), spacing, 0.0, "none")
    from scipy import ndimage

    airway = _airways(cand, small, body, sp)
    if airway.any():
        airway = ndimage.binary_dilation(airway, _disk(1)[None])  # the wall's partial volume
    lung = cand & ~airway
    # gas below the diaphragm can touch a lung base through a thin partial-volume neck: an
    # opening restricted to what stays lung-like cuts such necks (2 voxels ~ 3-4 mm)
    ball = ndimage.generate_binary_structure(3, 1)
    cores = _lung_components(ndimage.binary_erosion(lung, ball, iterations=2), voxel_ml,
                             0.5 * min_lung_ml)
    if cores.any():
        lung &= ndimage.binary_dilation(cores, ball, iterations=3)
    labels, split = _split_left_right(lung, voxel_ml, min_lung_ml)
    labels = _fill(labels, sp)
    labels[airway & (labels > 0)] = 0
    full = np.zeros(vol.shape, np.uint8)
    bbox = None
    if labels.any():
        bb = ndimage.find_objects((labels > 0).astype(np.uint8))[0]
        lo = [b.start for b in bb]
        hi = [b.stop for b in bb]
        steps = (step_z, step_xy, step_xy)
        lo_f = [l * st for l, st in zip(lo, steps)]
        hi_f = [min(n, h * st if h < labels.shape[a] else n) for a, (h, st, n) in
                enumerate(zip(hi, steps, vol.shape))]
        shape_f = tuple(h - l for l, h in zip(lo_f, hi_f))
        full[lo_f[0]:hi_f[0], lo_f[1]:hi_f[1], lo_f[2]:hi_f[2]] = _upsample(
            labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], shape_f, step_z, step_xy)
        bbox = tuple(slice(a, b) for a, b in zip(lo_f, hi_f))
    return LungMask(full, spacing, float(airway.sum() * voxel_ml), split, bbox)


def grow_into_lesions(lungs: LungMask, lesion: np.ndarray, min_inside: float = 0.3,
                      min_contact: float = 0.4) -> int:
    """Add lesion components that belong to a lung to that lung (in place); returns voxels added.

    Dense consolidation, masses and solid juxtapleural nodules are not air, so steps 1-5 leave
    them out of the lung although they are lung disease. A 3D component of the model's lesion
    mask joins the lung when at least ``min_inside`` of its voxels are already lung, or when
    lung makes up at least ``min_contact`` of the voxels just around it (a mass bulging from
    the lung into the mediastinum). A component that only brushes the lung - the heart, bowel
    under the diaphragm - does neither. What joins is then judged like any lung lesion by the
    false-positive stage (:mod:`.candidates`), so a wrongly joined blob is still no finding.
    """
    from scipy import ndimage

    if not lungs.found or not lesion.any():
        return 0
    from .postprocess import components_26

    ball = np.ones((3, 3, 3), bool)
    added = 0
    for box, inner in components_26(lesion):
        # one voxel of margin around the component (its shell), the component inside it
        sl = tuple(slice(max(0, s.start - 1), min(d, s.stop + 1)) for s, d in zip(box, lesion.shape))
        comp = np.zeros(tuple(s.stop - s.start for s in sl), bool)
        comp[tuple(slice(b.start - s.start, b.stop - s.start) for b, s in zip(box, sl))] = inner
        region = lungs.labels[sl]
        counts = np.bincount(region[comp], minlength=3)
        inside = counts[1:].sum() / float(comp.sum())
        if inside < min_inside:
            shell = ndimage.binary_dilation(comp, ball) & ~comp
            around = np.bincount(region[shell], minlength=3)
            if around[1:].sum() < min_contact * max(1, shell.sum()):
                continue
            counts = around
        side = RIGHT if counts[RIGHT] >= counts[LEFT] else LEFT
        new = comp & (region == 0)
        region[new] = side
        added += int(new.sum())
    if added:
        lungs.invalidate()
    return added
