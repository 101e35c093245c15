"""Predict on 2D 8-bit slices (PNG/JPG, any size, grey or colour).

Writes ``OUTDIR/<stem>_lesion.png`` (0/255 at the input's size: the union of all lesion types,
mapped back through the representation's exact inverse) and ``OUTDIR/predictions.csv`` with
``file,p_noncovid,p_covid,p_cancer,predicted``. A model with ``infection_types`` also writes
``<stem>_ggo.png`` and ``<stem>_consolidation.png`` (0/255, the input's size): the infected
pixels split by their most probable type (``model.infection_type_masks``), so the two are
disjoint and their union is the covid-infection part of ``_lesion.png``. An unreadable file
is reported on stderr and skipped; the CSV lists only files that were analysed.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np
import torch

from ChestCTMTLLib.model import INFECTION, infection_type_masks, infection_type_probabilities
from ChestCTMTLLib.modelio import default_model_dir, load_model
from ChestCTMTLLib.representation import gray8_to_model, load_gray8

from .sources.base import IMAGE_EXTS

CSV_COLUMNS = ("file", "p_noncovid", "p_covid", "p_cancer", "predicted")

#: file suffix per infection type (``model.INFECTION_TYPES``)
TYPE_SUFFIX = {"ground-glass opacity": "ggo", "consolidation": "consolidation"}


def collect_images(inputs: Iterable) -> List[Path]:
    files: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS and q.is_file())
        else:
            files.append(p)
    return files


def _unique_stem(stem: str, used: set) -> str:
    name, n = stem, 2
    while name in used:
        name = "%s-%d" % (stem, n)
        n += 1
    used.add(name)
    return name


def _write_mask(target: Path, mask: np.ndarray) -> None:
    """A bool mask as a 0/255 grey PNG, written atomically."""
    from PIL import Image

    tmp = target.with_name(target.stem + ".tmp.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp)
    os.replace(tmp, target)


def predict_images(inputs, output, model: Optional[str] = None, threshold: float = 0.5,
                   progress: bool = True) -> Tuple[int, int]:
    """Returns (files analysed, files refused)."""
    from tqdm import tqdm

    lm = load_model(Path(model) if model else default_model_dir())
    net, mcfg, rep = lm.model, lm.config, lm.representation
    tasks = [t for t in ("classification", "segmentation") if t in mcfg.tasks]
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = collect_images(inputs)
    if not files:
        print("no images found in %s" % list(map(str, inputs)), file=sys.stderr)
        return 0, 0
    rows, bad, used = [], 0, set()
    names = list(mcfg.class_names)
    for f in tqdm(files, desc="predict", disable=not progress):
        try:
            img = load_gray8(f)
            if min(img.shape) < 8:
                raise ValueError("image is too small (%s)" % (img.shape,))
        except (OSError, ValueError) as e:
            print("skipping %s: %s" % (f, e), file=sys.stderr)
            bad += 1
            continue
        x, geom = gray8_to_model(img, rep)
        with torch.inference_mode():
            out = net(x, tasks=tasks)
        stem = _unique_stem(f.stem, used)
        if "seg_logits" in out:
            prob = torch.sigmoid(out["seg_logits"].float()).amax(dim=1, keepdim=True)
            _write_mask(out_dir / ("%s_lesion.png" % stem), geom.to_input(prob)[0, 0].numpy() >= threshold)
        if "type_logits" in out:
            p_inf = torch.sigmoid(out["seg_logits"][:, mcfg.lesion_types.index(INFECTION)].float())
            q = infection_type_probabilities(out["seg_logits"], out["type_logits"], mcfg)
            masks = infection_type_masks(geom.to_input(p_inf[:, None])[0, 0].numpy(),
                                         geom.to_input(q)[0].numpy(), threshold)
            for name, m in zip(mcfg.infection_types, masks):
                _write_mask(out_dir / ("%s_%s.png" % (stem, TYPE_SUFFIX[name])), m)
        if "class_logits" in out:
            p = torch.softmax(out["class_logits"][0].float(), 0).numpy()
            rows.append({"file": str(f), "p_noncovid": "%.6f" % p[names.index("non-covid")],
                         "p_covid": "%.6f" % p[names.index("covid")],
                         "p_cancer": "%.6f" % p[names.index("cancer")], "predicted": names[int(p.argmax())]})
        else:
            rows.append({"file": str(f), "p_noncovid": "", "p_covid": "", "p_cancer": "", "predicted": ""})
    target = out_dir / "predictions.csv"
    tmp = target.with_name("predictions.csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, target)
    print("%d analysed, %d refused; results in %s" % (len(rows), bad, out_dir))
    return len(rows), bad
