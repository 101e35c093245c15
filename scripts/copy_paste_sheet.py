"""Draw a sheet of copy-paste examples: host, pasted result, nodule + lung outlines (+ hard negatives).

    python scripts/copy_paste_sheet.py [--config v3_sources] [--output docs/training/copy_paste_examples.png]
                                       [--per-host 3] [--seed 0]

Each row is one example, drawn by the training code (``copy_paste.CopyPaste.draw``) from the
config's training split, before the batch augmentation: the host slice, the pasted slice, and
the pasted slice with the nodule masks (red), the blend footprint (yellow), the host lung mask
(cyan) and the detection boxes (green). A last row shows hard-negative crop centres.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT / "ChestCTMTL", ROOT):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))


def outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=-1)


def draw_box(img: np.ndarray, box, colour) -> None:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x1, y1 = min(x1, img.shape[1]) - 1, min(y1, img.shape[0]) - 1
    img[y0, x0:x1 + 1] = colour
    img[y1, x0:x1 + 1] = colour
    img[y0:y1 + 1, x0] = colour
    img[y0:y1 + 1, x1] = colour


def example_row(cp, d, t: int, zoom_px: int = 96) -> np.ndarray:
    """host | pasted | outlines | zoom on the first nodule (pasted), each (S, S, 3)."""
    from ChestCTMTLTraining.batching import boxes_from_mask

    s, i = d["host"]
    host = next(x for x, _i, _sp in cp.hosts if x.name == s).images[i].astype(np.float32)
    out = d["image"]
    over = rgb(out)
    over[outline(d["lungs"].mask)] = (0, 1, 1)
    for p in d["pastes"]:
        over[outline(p.footprint)] = (1, 1, 0)
        over[outline(p.mask)] = (1, 0, 0)
    for box in boxes_from_mask(d["masks"][t]):
        draw_box(over, box, (0, 1, 0))
    size = out.shape[0]
    zoom = np.zeros((size, size, 3), np.float32)
    if d["pastes"]:
        x0, y0, x1, y1 = d["pastes"][0].box
        cy, cx = int((y0 + y1) / 2), int((x0 + x1) / 2)
        h = zoom_px // 2
        r0, c0 = min(max(cy - h, 0), size - zoom_px), min(max(cx - h, 0), size - zoom_px)
        crop = rgb(out[r0:r0 + zoom_px, c0:c0 + zoom_px])
        rep = size // zoom_px
        zoom[:zoom_px * rep, :zoom_px * rep] = np.kron(crop, np.ones((rep, rep, 1)))
    return np.concatenate([rgb(host), rgb(out), over, zoom], axis=1)


def hard_negative_row(hn, rng, n: int = 4, crop: int = 96) -> np.ndarray:
    tiles = []
    for _ in range(n):
        d = hn.draw(rng)
        img = rgb(d["image"])
        r, c = d["focus"]
        size = img.shape[0]
        r0, c0 = min(max(r - crop // 2, 0), size - crop), min(max(c - crop // 2, 0), size - crop)
        draw_box(img, (c0, r0, c0 + crop, r0 + crop), (1, 0.5, 0))
        img[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3] = (1, 0, 1)
        tiles.append(img)
    return np.concatenate(tiles, axis=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="v3_sources")
    ap.add_argument("--output", default=str(ROOT / "docs" / "training" / "copy_paste_examples.png"))
    ap.add_argument("--per-host", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from PIL import Image, ImageDraw

    from ChestCTMTLLib.results import LESION_TYPES
    from ChestCTMTLTraining.config import load_config, representation_of
    from ChestCTMTLTraining.copy_paste import CopyPaste, CopyPasteConfig
    from ChestCTMTLTraining.hard_negatives import HardNegativeConfig, HardNegatives
    from ChestCTMTLTraining.loading import load_split

    cfg = load_config(args.config)
    rep = representation_of(cfg)
    cpc = CopyPasteConfig.from_dict(dict(cfg.get("copy_paste") or {}, enabled=True))
    hnc = HardNegativeConfig.from_dict(cfg.get("hard_negatives"))
    names = {h.source for h in cpc.hosts} | {cpc.donors} | set(hnc.sources)
    sets = load_split(cfg, "train", rep, LESION_TYPES, [s for s in cfg["sources"] if s.get("name") in names])
    rng = np.random.default_rng(args.seed)
    rows, labels = [], []
    t = LESION_TYPES.index(cpc.lesion_type)
    for host in cpc.hosts:
        one = CopyPasteConfig.from_dict(dict(cfg["copy_paste"], enabled=True, hosts=[host.__dict__]))
        cp = CopyPaste(one, sets, rep.hu_window, LESION_TYPES)
        got = 0
        while got < args.per_host:
            d = cp.draw(rng)
            if not d["pastes"]:
                continue
            rows.append(example_row(cp, d, t))
            donors = ", ".join("%s %.0f mm" % (cp.donor.meta[p.donor]["nodule"], cp.donor.meta[p.donor]["diameter_mm"])
                               for p in d["pastes"])
            labels.append("%s  <-  %s" % (host.source, donors))
            got += 1
    if hnc.sources:
        hn = HardNegatives(HardNegativeConfig.from_dict(dict(cfg["hard_negatives"], enabled=True)), sets, rep.hu_window)
        rows.append(hard_negative_row(hn, rng))
        labels.append("hard negatives: crop centres on vessel / mediastinal border / lung base")
    size = rows[0].shape[0]
    sheet = np.concatenate(rows, axis=0)
    im = Image.fromarray((np.clip(sheet, 0, 1) * 255).astype(np.uint8))
    im = im.resize((im.width // 2, im.height // 2), Image.LANCZOS)
    draw = ImageDraw.Draw(im)
    for k, text in enumerate(labels):
        draw.text((4, k * size // 2 + 2), text, fill=(255, 255, 0))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp-%d.png" % os.getpid())
    im.save(tmp, optimize=True)
    os.replace(tmp, out)
    print("%s: %d rows, %.0f kB" % (out, len(rows), out.stat().st_size / 1024))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
