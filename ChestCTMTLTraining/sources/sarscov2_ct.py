"""SARS-CoV-2 CT-scan slices (Soares et al. 2020): COVID-19 vs non-COVID from one hospital.

The release identifies no patients, but its file numbers follow them: consecutive files
``Covid_(n).jpg``, ``Covid_(n+1).jpg`` are neighbouring slices of one scan (median correlation
of 32x32 thumbnails 0.87 / 0.83 for adjacent numbers against 0.49 / 0.58 for random pairs,
measured on the 2,479 slices). A random split would put near-duplicate neighbours on both
sides, so the split is by **contiguous file-number ranges** per class: the ``holdout`` rule
``{mode: contiguous, fraction: f, search: w}`` holds out the last ``f`` of each class folder and
moves the cut, within ``w`` files of the nominal one, to the adjacent pair that looks least
alike (the likeliest change of patient), so the scan that straddles a plain cut does not.
Some patients recur out of number order: ``purge: t`` then drops each held-out slice whose
nearest training thumbnail has correlation >= ``t`` (0.95 drops 2 % of the COVID-19 and 5 %
of the non-COVID held-out slices; a random split would leave 36 % and 22 % such pairs).
The other ``holdout`` modes of :func:`.base.split_items` work too.

Slices are lung-cropped 8-bit images, mapped to the model like every 2D source; no lesion
masks (``mask_present`` all false), class from the folder through ``mapping``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from ChestCTMTLLib.representation import Representation, geometry_for_image, load_gray8
from ChestCTMTLLib.results import LESION_TYPES

from .base import (IMAGE_EXTS, SampleSet, build_set, class_index, log, natural_key, source_folder,
                   split_items)

DEFAULT_MAPPING = {"covid": "covid", "non-covid": "non-covid"}
THUMB = 32


def file_number(path) -> int:
    """``Covid_(123).jpg`` -> 123 (the release's running number)."""
    m = re.search(r"\((\d+)\)", Path(path).name) or re.search(r"(\d+)", Path(path).name)
    if not m:
        raise ValueError("%s has no running number in its name" % Path(path).name)
    return int(m.group(1))


def thumbnail(path) -> np.ndarray:
    """Zero-mean, unit-norm 32x32 grey thumbnail: the similarity measure of the split."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (THUMB * 4, THUMB * 4))
        a = np.asarray(im.convert("L").resize((THUMB, THUMB), Image.BILINEAR), np.float32).ravel()
    a = a - a.mean()
    return a / (np.linalg.norm(a) + 1e-6)


def contiguous_cut(files: Sequence[Path], fraction: float, search: int) -> int:
    """Index of the first held-out file: near ``len * (1 - fraction)``, at a dissimilar pair."""
    n = len(files)
    nominal = n - int(round(n * fraction))
    if nominal <= 0 or nominal >= n or search <= 0:
        return nominal
    lo, hi = max(1, nominal - search), min(n - 1, nominal + search)
    thumbs = [thumbnail(p) for p in files[lo - 1:hi + 1]]
    sims = [float(thumbs[i] @ thumbs[i + 1]) for i in range(len(thumbs) - 1)]  # pair (lo-1+i, lo+i)
    return lo + int(np.argmin(sims))


def split_sarscov2(files: Sequence[Path], holdout: Optional[dict], split: str) -> List[Path]:
    """Files of ``split`` (one class folder); ``purge`` drops held-out near-duplicates of train files."""
    files = sorted(files, key=file_number)
    holdout = holdout or {}
    if holdout.get("mode") != "contiguous":
        return sorted(split_items(files, holdout, split), key=file_number)
    cut = contiguous_cut(files, float(holdout.get("fraction", 0.2)), int(holdout.get("search", 20)))
    if split == "train":
        return list(files[:cut])
    if split == "all":
        return list(files)
    if split != "val":
        raise ValueError("split must be train, val or all")
    val = list(files[cut:])
    if holdout.get("purge") is not None and val and cut:
        val = [p for p, keep in zip(val, not_near_duplicates(files[:cut], val, float(holdout["purge"])))
               if keep]
    return val


def not_near_duplicates(train: Sequence[Path], val: Sequence[Path], threshold: float) -> List[bool]:
    """For each ``val`` file: is its most similar ``train`` thumbnail below ``threshold``?"""
    a = np.stack([thumbnail(p) for p in train])
    b = np.stack([thumbnail(p) for p in val])
    keep = ((b @ a.T).max(axis=1) < threshold).tolist()
    if not all(keep):
        log.info("SARS-CoV-2 CT: %d of %d held-out slices dropped as near-duplicates (similarity >= %.2f) "
                 "of training slices", len(keep) - sum(keep), len(keep), threshold)
    return keep


def load_sarscov2_ct(spec: dict, split: str, rep: Representation, root: Path,
                     lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    folder = source_folder(root, spec, "sarscov2_ct", "SARS-CoV-2 CT")
    mapping = dict(DEFAULT_MAPPING, **(spec.get("mapping") or {}))
    name = spec.get("name", "sarscov2-ct")
    rows, skipped = [], []
    for sub in sorted((p for p in folder.iterdir() if p.is_dir()), key=natural_key):
        cls = class_index(mapping.get(sub.name))
        if cls < 0:
            log.info("SARS-CoV-2 CT: class folder %s not mapped, dropped", sub.name)
            continue
        files = [p for p in sub.iterdir() if p.suffix.lower() in IMAGE_EXTS]
        for p in split_sarscov2(files, spec.get("holdout"), split):
            try:
                img = load_gray8(p)
                geom = geometry_for_image(img.shape, rep.input_size)
                x = geom.to_model(torch.from_numpy(img))[0, 0].numpy()
            except (OSError, ValueError) as e:
                log.warning("skipping %s: %s", p, e)
                skipped.append("%s: %s" % (p, e))
                continue
            rows.append({"image": x, "cls": cls, "present": np.zeros(len(lesion_types), bool),
                         "mask": np.zeros((len(lesion_types), rep.input_size, rep.input_size), np.uint8),
                         "id": "%s/%s/%s" % (name, sub.name, p.name),
                         "meta": {"image": str(p), "folder": sub.name, "number": file_number(p),
                                  "geometry": geom.to_dict()}})
    return build_set(name, split, rep, rows, len(lesion_types), skipped=skipped)
