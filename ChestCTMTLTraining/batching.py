"""Mixed-source batches: sampling, CT-slice augmentation, and detection targets.

Every random choice of step ``s`` on rank ``r`` comes from ``np.random.default_rng([seed, r, s])``,
so a run is reproducible and ``--resume`` continues with exactly the batches it would have seen.
Lesion boxes are derived from connected components of the (augmented) lesion masks, so
detection needs no separate box annotations and boxes always match the augmented image.
Generated samples (``extras``: :mod:`.copy_paste`, :mod:`.hard_negatives`) are drawn like one
more source each, with their own share of the draws; without them the draws are unchanged.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .sources.base import SampleSet
from .sources.msd_h5 import mosaic


# --------------------------------------------------------------------------- detection targets

def boxes_from_mask(mask: np.ndarray, min_area: int = 6, threshold: float = 0.5):
    """Boxes (x0, y0, x1, y1) in continuous pixels of the connected components of ``mask``."""
    from scipy import ndimage

    lab, n = ndimage.label(mask >= threshold)
    boxes = []
    for sl in ndimage.find_objects(lab):
        if sl is None:
            continue
        r, c = sl
        if (r.stop - r.start) * (c.stop - c.start) < min_area:
            continue
        boxes.append((float(c.start), float(r.start), float(c.stop), float(r.stop)))
    return boxes


def gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius so that a box shifted by it still has IoU >= min_overlap."""
    a1, b1, c1 = 1, (h + w), w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4, 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def detection_targets(masks: np.ndarray, present: np.ndarray, stride: int = 4, min_area: int = 6):
    """Heatmap (T,h,w), log-size (2,h,w), offset (2,h,w), centre mask (h,w) from (T,S,S) masks."""
    t_n, s, _ = masks.shape
    h = w = s // stride
    hm = np.zeros((t_n, h, w), np.float32)
    size = np.zeros((2, h, w), np.float32)
    off = np.zeros((2, h, w), np.float32)
    reg = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for t in range(t_n):
        if not present[t]:
            continue
        for x0, y0, x1, y1 in boxes_from_mask(masks[t], min_area):
            cx, cy = (x0 + x1) / 2.0 / stride, (y0 + y1) / 2.0 / stride
            j, i = min(int(cx), w - 1), min(int(cy), h - 1)
            bw, bh = (x1 - x0) / stride, (y1 - y0) / stride
            radius = max(0.0, gaussian_radius(bh, bw))
            sigma = (2 * int(radius) + 1) / 6.0
            g = np.exp(-((xx - j) ** 2 + (yy - i) ** 2) / (2 * sigma * sigma))
            np.maximum(hm[t], g, out=hm[t])
            hm[t, i, j] = 1.0
            size[:, i, j] = (math.log(max(x1 - x0, 1.0)), math.log(max(y1 - y0, 1.0)))
            off[:, i, j] = (cx - j, cy - i)
            reg[i, j] = 1.0
    return hm, size, off, reg


# --------------------------------------------------------------------------- augmentation

def augment(image: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, cfg: dict):
    """Flips / 90-degree turns, small rotation+scale+shift, intensity and resolution jitter.

    ``image`` (1,S,S) unit, ``masks`` (T,S,S) in [0,1]. Geometric changes apply to both;
    intensity ones (gamma, contrast, brightness = a window change; noise; down-up resampling as
    a 256 vs 512 px / JPG-like quality change) to the image only.
    """
    if not cfg or not cfg.get("enabled", True):
        return image, masks
    if rng.random() < cfg.get("flip_lr", 0.5):
        image, masks = image.flip(-1), masks.flip(-1)
    if rng.random() < cfg.get("rot90", 0.25):
        k = int(rng.integers(1, 4))
        image, masks = torch.rot90(image, k, (-2, -1)), torch.rot90(masks, k, (-2, -1))
    if rng.random() < cfg.get("affine_p", 0.8):
        ang = math.radians(rng.uniform(-1, 1) * cfg.get("rotate_deg", 10.0))
        sc = math.exp(rng.uniform(-1, 1) * math.log(cfg.get("scale", 1.2)))
        tx, ty = (rng.uniform(-1, 1, 2) * cfg.get("shift", 0.08)).tolist()
        cos, sin = math.cos(ang) / sc, math.sin(ang) / sc
        theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=torch.float32)[None]
        both = torch.cat([image, masks], 0)[None]
        grid = F.affine_grid(theta, both.shape, align_corners=False)
        both = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        image, masks = both[:1], both[1:]
    if rng.random() < cfg.get("intensity_p", 0.8):
        gamma = math.exp(rng.uniform(-1, 1) * cfg.get("gamma", 0.3))
        a = 1.0 + rng.uniform(-1, 1) * cfg.get("contrast", 0.15)
        b = rng.uniform(-1, 1) * cfg.get("brightness", 0.08)
        image = (image.clamp(0, 1) ** gamma) * a + b
    if rng.random() < cfg.get("resample_p", 0.3):
        s = image.shape[-1]
        f = rng.uniform(0.5, 0.9)
        small = F.interpolate(image[None], size=(int(s * f), int(s * f)), mode="bilinear",
                              align_corners=False, antialias=True)
        image = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)[0]
    if rng.random() < cfg.get("noise_p", 0.3):
        g = torch.from_numpy(rng.standard_normal(image.shape).astype(np.float32))
        image = image + g * float(rng.uniform(0, cfg.get("noise", 0.03)))
    return image.clamp(0, 1), masks.clamp(0, 1)


# --------------------------------------------------------------------------- sampling

class MixedSampler:
    """Draws batches from several :class:`SampleSet` s by source weight, class-balanced inside."""

    def __init__(self, sets: Sequence[SampleSet], weights: Sequence[float], input_size: int,
                 n_classes: int, aug: dict, seed: int = 0, rank: int = 0, stride: int = 4,
                 class_balance: bool = True, extras: Sequence = ()):
        if not sets:
            raise ValueError("no training samples: every source is empty for this split")
        self.sets = list(sets)
        w = np.asarray(weights, np.float64)
        self.p = w / w.sum()
        # generated samples (copy-paste, hard negatives): each takes its share ``p`` of all draws
        self.extras = list(extras)
        if self.extras:
            share = sum(float(e.p) for e in self.extras)
            if not 0 <= share < 1:
                raise ValueError("generated samples take %.3g of all draws; must be < 1" % share)
            self.p = np.concatenate([self.p * (1.0 - share), [float(e.p) for e in self.extras]])
        self.size = input_size
        self.aug = aug
        self.seed = seed
        self.rank = rank
        self.stride = stride
        self.n_classes = n_classes
        self.class_balance = class_balance
        self._by_class = []
        for s in self.sets:
            groups = [np.nonzero(s.classes == c)[0] for c in range(-1, n_classes)]
            self._by_class.append([g for g in groups if len(g)])

    def _pick(self, rng, si: int) -> int:
        s = self.sets[si]
        if self.class_balance and len(self._by_class[si]) > 1:
            group = self._by_class[si][int(rng.integers(len(self._by_class[si])))]
            return int(group[int(rng.integers(len(group)))])
        return int(rng.integers(len(s)))

    def sample(self, rng, augment_on: bool = True, crop_size: Optional[int] = None,
               lesion_crop_p: float = 0.5) -> dict:
        si = int(rng.choice(len(self.p), p=self.p))
        focus = None
        if si >= len(self.sets):
            d = self.extras[si - len(self.sets)].draw(rng)
            image, masks = torch.from_numpy(d["image"])[None], torch.from_numpy(d["masks"])
            cls, present, weight, focus = d["cls"], d["present"], d["weight"], d.get("focus")
            if focus is not None:  # a channel that follows the augmentation's geometry
                masks = torch.cat([masks, focus_map(focus, image.shape[-1])[None]], 0)
        elif self.sets[si].kind == "patch":
            s = self.sets[si]
            idx = rng.integers(len(s), size=9)
            img, msk = mosaic(s.images[idx], s.masks[idx], self.size)
            image, masks = torch.from_numpy(img)[None], torch.from_numpy(msk)
            cls, present, weight = -1, s.mask_present[idx].all(axis=0), float(s.seg_weight[idx].mean())
        else:
            s = self.sets[si]
            i = self._pick(rng, si)
            image = torch.from_numpy(s.images[i].astype(np.float32))[None]
            masks = torch.from_numpy(s.masks[i].astype(np.float32) / 255.0)
            cls, present, weight = int(s.classes[i]), s.mask_present[i], float(s.seg_weight[i])
        if augment_on:
            image, masks = augment(image, masks, rng, self.aug)
        if focus is not None:
            masks, fmap = masks[:-1], masks[-1]
            if crop_size and crop_size < image.shape[-1]:
                image, masks = focus_crop(image, masks, fmap, int(crop_size), rng)
        elif crop_size and crop_size < image.shape[-1]:
            image, masks = random_crop(image, masks, int(crop_size), rng, lesion_crop_p)
        return make_item(image, masks, cls, present, weight, self.stride)

    def batch(self, step: int, batch_size: int, crop_size: Optional[int] = None,
              lesion_crop_p: float = 0.5) -> dict:
        rng = np.random.default_rng([self.seed, self.rank, step])
        return collate([self.sample(rng, True, crop_size, lesion_crop_p) for _ in range(batch_size)])


def random_crop(image: torch.Tensor, masks: torch.Tensor, size: int, rng, lesion_p: float = 0.5):
    """A ``size`` square window at the same scale; with ``lesion_p`` centred near a lesion pixel.

    Cropping trains the fully convolutional heads at a fraction of the cost (CPU budget); lesion-
    centred windows oversample the rare lesions that detection and segmentation must learn.
    """
    s = image.shape[-1]
    fg = masks.amax(0) >= 0.5 if masks.numel() else None
    if fg is not None and rng.random() < lesion_p and bool(fg.any()):
        ys, xs = torch.nonzero(fg, as_tuple=True)
        i = int(rng.integers(len(ys)))
        cy = int(ys[i]) + int(rng.integers(-size // 4, size // 4 + 1))
        cx = int(xs[i]) + int(rng.integers(-size // 4, size // 4 + 1))
        r0 = min(max(cy - size // 2, 0), s - size)
        c0 = min(max(cx - size // 2, 0), s - size)
    else:
        r0 = int(rng.integers(0, s - size + 1))
        c0 = int(rng.integers(0, s - size + 1))
    return image[..., r0:r0 + size, c0:c0 + size], masks[..., r0:r0 + size, c0:c0 + size]


def focus_map(focus, size: int, sigma: float = 2.0) -> torch.Tensor:
    """A small Gaussian blob at ``focus`` (row, col): where a hard-negative crop is centred."""
    yy, xx = np.mgrid[0:size, 0:size]
    g = np.exp(-((yy - focus[0]) ** 2 + (xx - focus[1]) ** 2) / (2 * sigma * sigma))
    return torch.from_numpy(g.astype(np.float32))


def focus_crop(image: torch.Tensor, masks: torch.Tensor, fmap: torch.Tensor, size: int, rng):
    """A ``size`` window centred on the (augmented) focus blob's peak; random if it left the image."""
    s = image.shape[-1]
    if float(fmap.max()) < 0.05:
        return random_crop(image, masks, size, rng, 0.0)
    cy, cx = divmod(int(torch.argmax(fmap)), fmap.shape[-1])
    r0 = min(max(cy - size // 2, 0), s - size)
    c0 = min(max(cx - size // 2, 0), s - size)
    return image[..., r0:r0 + size, c0:c0 + size], masks[..., r0:r0 + size, c0:c0 + size]


def make_item(image: torch.Tensor, masks: torch.Tensor, cls: int, present, weight: float, stride: int = 4):
    present = np.asarray(present, bool)
    hm, size, off, reg = detection_targets(masks.numpy(), present, stride)
    return {"image": image.float(), "masks": masks.float(), "cls": cls, "present": torch.from_numpy(present),
            "weight": weight, "hm": torch.from_numpy(hm), "size": torch.from_numpy(size),
            "off": torch.from_numpy(off), "reg": torch.from_numpy(reg)}


def collate(items: List[dict]) -> Dict[str, torch.Tensor]:
    return {
        "image": torch.stack([it["image"] for it in items]),
        "masks": torch.stack([it["masks"] for it in items]),
        "cls": torch.tensor([it["cls"] for it in items], dtype=torch.long),
        "present": torch.stack([it["present"] for it in items]),
        "weight": torch.tensor([it["weight"] for it in items], dtype=torch.float32),
        "hm": torch.stack([it["hm"] for it in items]),
        "size": torch.stack([it["size"] for it in items]),
        "off": torch.stack([it["off"] for it in items]),
        "reg": torch.stack([it["reg"] for it in items]),
    }


def eval_items(s: SampleSet, input_size: int, stride: int = 4):
    """Un-augmented items of a set, in order (MSD patches as fixed mosaics of 9)."""
    if s.kind == "patch":
        for start in range(0, len(s), 9):
            idx = np.arange(start, min(start + 9, len(s)))
            img, msk = mosaic(s.images[idx], s.masks[idx], input_size)
            yield ("%s[%d:%d]" % (s.name, idx[0], idx[-1] + 1),
                   make_item(torch.from_numpy(img)[None], torch.from_numpy(msk), -1,
                             s.mask_present[idx].all(axis=0), 1.0, stride), None)
        return
    for i in range(len(s)):
        yield (s.ids[i], make_item(torch.from_numpy(s.images[i].astype(np.float32))[None],
                                   torch.from_numpy(s.masks[i].astype(np.float32) / 255.0),
                                   int(s.classes[i]), s.mask_present[i], float(s.seg_weight[i]), stride),
               s.meta[i] if s.meta else None)
