"""Lungs and intensity levels of one model-ready 2D slice (any source, unit intensity).

Copy-paste and the hard negatives need to know where the lungs are on slices that have no HU
any more: 8-bit sources (IQ-OTH/NCCD in a soft-tissue window with black lungs, SARS-CoV-2 in
a lung window with grey lungs, lung-cropped) and HU volumes already brought to the model grid.
``ChestCTMTLLib.lungs`` needs a 3D HU volume, so this is a 2D rule that needs no window:

1. a Gaussian filter (sigma 1.5 px): IQ-OTH's soft tissue is speckled with black pixels;
2. Otsu's threshold of the filtered slice splits dark (air, lung) from bright (tissue, bone);
   when the bright class is under 20 % of the slice it is bone alone (IQ-OTH's soft-tissue
   window, where lungs and air are black and tissue dim), and Otsu's threshold of the dark
   class is taken instead (a source known to be in such a window, ``soft_tissue_window``,
   takes the soft-tissue rules below on every slice); the bright class is closed with a 2-px
   disk so a thin chest wall still separates the lungs from the air outside;
3. dark components lining three sides of the image, both its left and right sides, one of
   its corners, or a fifth of its border, are the air around the patient (a lung of a
   lung-cropped slice reaches one or two sides for a short stretch, not the corner); so are
   components whose 2-px ring is mostly not the body (the largest bright component), and
   thin strips (no point 6 px from the component's edge) like the gap between the edges of
   the table; components under 1 % of the slice are trachea, bowel gas, noise; of the rest,
   those >= 15 % of the largest are lungs (two, or one when they touch). In a soft-tissue
   window fat is black like the lungs, which then run into the fat layers of the chest wall
   and out through them: there the dark class is first opened with a disk of 3 and of 5 px,
   which removes thin dark layers and channels, and the lungs found in either are grown back
   by the same radius inside the dark class;
4. holes under 2 % of the slice filled (vessels and nodules inside a lung belong to it; the
   heart that two joined lungs enclose does not).

The same threshold gives the two intensity levels a pasted nodule is mapped to: the median of
the filtered slice inside the lungs (parenchyma) and the median of the bright class (soft
tissue, what a solid nodule looks like in that source's window).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

SMOOTH_SIGMA = 1.5
BONE_ONLY_FRACTION = 0.2
MIN_COMPONENT_FRACTION = 0.01
KEEP_RELATIVE = 0.15
CLOSE_RADIUS = 2
OUTSIDE_BORDER_FRACTION = 0.2
BODY_RING_FRACTION = 0.5
MIN_HALF_WIDTH_PX = 6
OPEN_RADII = (3, 5)
MAX_HOLE_FRACTION = 0.02


@dataclass
class SliceLungs:
    """The lung mask of a slice and its two intensity levels (unit intensity)."""

    mask: np.ndarray  # (S, S) bool
    lung_level: float  # median of the filtered slice inside the lungs
    tissue_level: float  # median of the filtered slice above the threshold
    threshold: float
    noise: float  # robust sd of the unfiltered residual in soft tissue
    parenchyma: Optional[np.ndarray] = None  # (S, S) bool: lung pixels below the threshold

    @property
    def found(self) -> bool:
        return bool(self.mask.any())


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of values in [0, 1] (between-class variance maximised)."""
    hist, edges = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    mt = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def is_outside_air(component: np.ndarray, sl, shape) -> bool:
    """A dark component in its bounding box ``sl`` is outside air when it lines three sides of
    the image or more than ``OUTSIDE_BORDER_FRACTION`` of its border (a lung of a lung-cropped
    slice reaches one or two sides, for a short stretch)."""
    rows, cols = sl
    h, w = shape
    touch = 0
    border = 0
    if rows.start == 0:
        touch, border = touch + 1, border + int(component[0].sum())
    if rows.stop == h:
        touch, border = touch + 1, border + int(component[-1].sum())
    if cols.start == 0:
        touch, border = touch + 1, border + int(component[:, 0].sum())
    if cols.stop == w:
        touch, border = touch + 1, border + int(component[:, -1].sum())
    across = cols.start == 0 and cols.stop == w  # from the right side to the left: under the table
    return touch >= 3 or across or border > OUTSIDE_BORDER_FRACTION * 2 * (h + w)


def largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy * yy + xx * xx <= radius * radius


def fill_small_holes(mask: np.ndarray) -> np.ndarray:
    """Holes under ``MAX_HOLE_FRACTION`` of the slice filled: vessels and nodules, not the heart
    or mediastinum that two lungs joined in front and behind enclose."""
    from scipy import ndimage

    holes = ndimage.binary_fill_holes(mask) & ~mask
    lab, n = ndimage.label(holes)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    small = sizes < MAX_HOLE_FRACTION * mask.size
    small[0] = False
    return mask | small[lab]


def lung_components(dark: np.ndarray, bright: np.ndarray) -> np.ndarray:
    """Dark components that are lungs (step 3 of the module docstring), holes filled."""
    from scipy import ndimage

    lab, n = ndimage.label(dark)
    if n == 0:
        return np.zeros(dark.shape, bool)
    body = largest_component(bright)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    cands = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or sizes[i] < MIN_COMPONENT_FRACTION * dark.size:
            continue
        if is_outside_air(lab[sl] == i, sl, dark.shape):
            continue
        comp = lab == i
        ring = ndimage.binary_dilation(comp, iterations=2) & ~comp
        if body[ring].mean() < BODY_RING_FRACTION:
            continue
        if ndimage.distance_transform_edt(np.pad(comp[sl], 1)).max() < MIN_HALF_WIDTH_PX:
            continue  # a thin strip, e.g. the gap between the table's edges
        cands.append(i)
    keep = np.zeros(n + 1, bool)
    if cands:
        biggest = max(sizes[i] for i in cands)
        for i in cands:
            keep[i] = sizes[i] >= KEEP_RELATIVE * biggest
    return fill_small_holes(keep[lab])


def slice_lungs(image: np.ndarray, soft_tissue_window: bool = False) -> SliceLungs:
    """Lung mask and levels of a (S, S) unit slice (rule in the module docstring).

    ``soft_tissue_window``: the source is known to show lungs and fat alike black (IQ-OTH);
    its slices then always take the soft-tissue rules, also where their bright class is large.
    """
    from scipy import ndimage

    x = np.asarray(image, np.float32)
    if x.ndim != 2:
        raise ValueError("slice_lungs needs a 2D slice, got shape %s" % (x.shape,))
    smooth = ndimage.gaussian_filter(x, SMOOTH_SIGMA, mode="nearest")
    thr = otsu_threshold(smooth)
    soft = bool(soft_tissue_window)
    if (smooth >= thr).mean() < BONE_ONLY_FRACTION:  # a soft-tissue window: bone vs the rest
        soft = True
        thr = otsu_threshold(smooth[smooth < thr])
    bright = ndimage.binary_closing(np.pad(smooth >= thr, CLOSE_RADIUS, mode="edge"), disk(CLOSE_RADIUS))
    bright = bright[CLOSE_RADIUS:-CLOSE_RADIUS, CLOSE_RADIUS:-CLOSE_RADIUS]
    dark = ~bright
    if not soft:
        mask = lung_components(dark, bright)
    else:
        # fat is black in this window too, so the lungs run into the chest wall's fat layers
        # and out through them: cut thin dark layers and channels (an opening), find the
        # lungs, grow them back into the dark
        mask = np.zeros(dark.shape, bool)
        for r in OPEN_RADII:  # a lung cut free at either radius counts
            cut = ndimage.binary_opening(dark, disk(r))
            found = lung_components(cut, bright)
            mask |= fill_small_holes(ndimage.binary_dilation(found, disk(r)) & dark)
    tissue = float(np.median(smooth[bright])) if bright.any() else 1.0
    lung = float(np.median(smooth[mask & dark])) if (mask & dark).any() else 0.0
    resid = (x - smooth)[bright & ndimage.binary_erosion(bright, iterations=2)]
    noise = float(1.4826 * np.median(np.abs(resid - np.median(resid)))) if resid.size > 50 else 0.0
    return SliceLungs(mask, lung, tissue, thr, noise, mask & (smooth < thr))
