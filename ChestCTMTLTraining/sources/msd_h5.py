"""MSD Task06 lung-tumour patches (HDF5), and the mosaic that shows them at the slices' scale."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ChestCTMTLLib.representation import Representation
from ChestCTMTLLib.results import LESION_TYPES

from .base import SampleSet, empty_set, log, type_index

def load_msd_h5(spec: dict, split: str, rep: Representation, root: Path,
                lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    """MSD Task06 patches (N,1,48,48) in [0,1] + binary tumour masks; kept at patch size.

    Patches are 2 mm/pixel; :class:`MosaicSampler` tiles them 3x3 at ~85 px each, the scale of
    the other sources (~1.1 mm per model pixel), with no class label (a tumour patch framed as a
    tiny image would teach the classifier a format, not a disease).
    """
    import h5py

    files = [root / f for f in (spec["files"] if "files" in spec else [spec["path"]])]
    hold = spec.get("holdout") or {}
    if hold.get("mode") == "names":
        names = set(hold.get("names", []))
        files = [f for f in files if (f.name in names) == (split == "val")] if split != "all" else files
    elif split == "val" and hold.get("mode", "none") == "none":
        files = []
    elif split == "train" and hold.get("mode") == "all":
        files = []
    t = type_index(spec.get("lesion_type", "nodule-mass"), lesion_types)
    imgs, masks, ids, skipped = [], [], [], []
    for f in files:
        try:
            with h5py.File(f, "r") as h:
                x = np.asarray(h["images"], np.float32)[:, 0]
                y = np.asarray(h["labels"])[:, 0] > 0.5
        except (OSError, KeyError) as e:
            log.warning("skipping %s: %s", f, e)
            skipped.append("%s: %s" % (f, e))
            continue
        imgs.append(np.clip(x, 0, 1))
        masks.append(y)
        ids += ["%s#%d" % (f.name, i) for i in range(len(x))]
    n_t = len(lesion_types)
    if not imgs:
        out = empty_set(spec.get("name", "msd"), split, rep, n_t)
        out.skipped = skipped
        return out
    x = np.concatenate(imgs)
    y = np.concatenate(masks)
    m = np.zeros((len(x), n_t) + x.shape[1:], np.uint8)
    m[:, t] = y.astype(np.uint8) * 255
    present = np.ones((len(x), n_t), bool)  # lung tumour patches: no COVID infection
    return SampleSet(spec.get("name", "msd"), split, x.astype(np.float16), np.full(len(x), -1, np.int64), m,
                     present, np.full(len(x), float(spec.get("weight_seg", 1.0)), np.float32), ids,
                     kind="patch", meta=[{"patch": i} for i in ids], skipped=skipped)



def mosaic(patches: np.ndarray, masks: np.ndarray, size: int, grid: int = 3):
    """Tile ``grid``x``grid`` patches (N,h,w)/(N,T,h,w) into one (size,size) image and mask."""
    cell = size // grid
    x = torch.from_numpy(patches.astype(np.float32))[:, None]
    m = torch.from_numpy(masks.astype(np.float32) / 255.0)
    x = torch.nn.functional.interpolate(x, size=(cell, cell), mode="bilinear", align_corners=False)[:, 0]
    m = torch.nn.functional.interpolate(m, size=(cell, cell), mode="bilinear", align_corners=False)
    img = torch.zeros(size, size)
    msk = torch.zeros(m.shape[1], size, size)
    off = (size - cell * grid) // 2
    for n in range(min(len(x), grid * grid)):
        r, c = divmod(n, grid)
        img[off + r * cell:off + (r + 1) * cell, off + c * cell:off + (c + 1) * cell] = x[n]
        msk[:, off + r * cell:off + (r + 1) * cell, off + c * cell:off + (c + 1) * cell] = m[n]
    return img.numpy(), msk.numpy()
