"""Data packs: a config's samples, already in the input representation, in one portable file.

Why: reading the sources (DICOM + XML, NIfTI, JPG/PNG folders, HDF5) needs SimpleITK, pydicom
and the 150 MB data root; a borrowed GPU machine has neither and takes a 64 MB working tree.
A pack holds exactly what :func:`~ChestCTMTLTraining.sources.load_sources` returns for each split
(the same :class:`SampleSet` s: classes, masks, label presence, seg weights, ids, slice
geometry, per-scan nodules), so training, evaluation and the ablation run unchanged from it.

Images are stored as 8-bit (``round(unit * 255)``: at most 1/510 off, 2.4 HU in the lung
window; the COVID-SemiSeg and IQ-OTH/NCCD slices are 8-bit to begin with), masks as they are.
For slices whose segmentation is scored at the original resolution (COVID-SemiSeg doctor
labels) the original ground-truth mask travels too. The pack records a digest of the sources,
the representation and the lesion types; loading it under another config is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import List, Sequence

import numpy as np

from ChestCTMTLLib.representation import Representation
from ChestCTMTLLib.results import LESION_TYPES

from .config import representation_of, resolve_root
from .sources import SampleSet, load_sources
from .sources.base import json_default, read_gt_labels

PACK_FORMAT = "chestctmtl-pack-1"


class PackError(ValueError):
    """A pack that cannot serve this config (missing, corrupt, other sources or representation)."""


def pack_digest(sources: Sequence[dict], rep: Representation, lesion_types: Sequence[str]) -> str:
    """What the samples depend on. Weights and training-only keys are left out on purpose."""
    keep = []
    for s in sources:
        keep.append({k: v for k, v in s.items() if k not in ("weight", "use_for_training")})
    blob = json.dumps({"sources": keep, "representation": rep.to_dict(),
                       "lesion_types": list(lesion_types)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _to_u8(images: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(images.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_pack(cfg: dict, output, splits: Sequence[str] = ("train", "val"),
               lesion_types: Sequence[str] = LESION_TYPES) -> Path:
    """Load every source of ``cfg`` for each split and write them to ``output`` (atomically)."""
    rep = representation_of(cfg)
    root = resolve_root(cfg)
    output = Path(output)
    header = {"format": PACK_FORMAT, "digest": pack_digest(cfg["sources"], rep, lesion_types),
              "representation": rep.to_dict(), "lesion_types": list(lesion_types),
              "config": cfg.get("_path"), "splits": {}}
    arrays = {}
    for split in splits:
        sets = load_sources(cfg["sources"], split, rep, root, lesion_types)
        entries = []
        for i, s in enumerate(sets):
            key = "%s/%d/" % (split, i)
            arrays[key + "images"] = _to_u8(s.images)
            arrays[key + "classes"] = s.classes
            arrays[key + "masks"] = s.masks
            arrays[key + "mask_present"] = s.mask_present
            arrays[key + "seg_weight"] = s.seg_weight
            gts = []
            for n, m in enumerate(s.meta or []):
                if m.get("mask") and m.get("geometry"):
                    arrays[key + "gt/%d" % n] = read_gt_labels(m)
                    gts.append(n)
            entries.append({"name": s.name, "kind": s.kind, "ids": list(s.ids), "meta": s.meta,
                            "skipped": s.skipped, "volumes": s.volumes, "gt_original": gts})
        header["splits"][split] = entries
    arrays["header"] = np.frombuffer(json.dumps(header, default=json_default).encode(), np.uint8)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp-%d" % os.getpid())
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
    return output


def read_pack(path, split: str, rep: Representation, sources: Sequence[dict],
              lesion_types: Sequence[str] = LESION_TYPES) -> List[SampleSet]:
    """The split's sample sets from a pack written for the same sources and representation."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PackError("data pack %s does not exist (make one with `python -m ChestCTMTLTraining "
                        "pack --config ... --output %s`)" % (path, path.name))
    try:
        z = np.load(path, allow_pickle=False)
        header = json.loads(bytes(z["header"]).decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise PackError("data pack %s is unreadable or corrupt: %s" % (path, exc)) from None
    if header.get("format") != PACK_FORMAT:
        raise PackError("data pack %s has format %r, expected %r" % (path, header.get("format"), PACK_FORMAT))
    want = pack_digest(sources, rep, lesion_types)
    if header["digest"] != want:
        raise PackError("data pack %s was made for other sources, representation or lesion types "
                        "(pack: %s, config: %s); re-pack with this config"
                        % (path, header["representation"], rep.to_dict()))
    if split == "all":
        return [s for sp in sorted(header["splits"]) for s in read_pack(path, sp, rep, sources, lesion_types)]
    if split not in header["splits"]:
        raise PackError("data pack %s has no %r split (it has %s)" % (path, split, sorted(header["splits"])))
    out = []
    with z:
        for i, e in enumerate(header["splits"][split]):
            key = "%s/%d/" % (split, i)
            meta = [dict(m) for m in e["meta"]]
            for n in e["gt_original"]:
                meta[n]["gt_array"] = z[key + "gt/%d" % n]
            out.append(SampleSet(
                e["name"], split, (z[key + "images"].astype(np.float32) / 255.0).astype(np.float16),
                z[key + "classes"], z[key + "masks"], z[key + "mask_present"], z[key + "seg_weight"],
                list(e["ids"]), e["kind"], meta, list(e["skipped"]), list(e["volumes"])))
    return out


def pack_info(path) -> dict:
    """Header summary (no arrays): what a pack holds, for the CLI."""
    with np.load(Path(path), allow_pickle=False) as z:
        header = json.loads(bytes(z["header"]).decode())
    return {"format": header["format"], "digest": header["digest"], "config": header.get("config"),
            "representation": header["representation"],
            "splits": {sp: {e["name"]: len(e["ids"]) for e in entries}
                       for sp, entries in header["splits"].items()}}
