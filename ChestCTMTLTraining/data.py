"""Data adapters: every real source -> 2D samples in the one input representation.

Each adapter returns a :class:`SampleSet` holding model-ready slices (``input_size`` square,
unit intensity, produced by the same :mod:`ChestCTMTLLib.representation` functions that
inference uses) plus per-task label presence, so a batch can mix samples that only have a
class, only a mask, or both:

* ``classes[n] = -1``: no class label;
* ``mask_present[n, t]``: lesion type ``t`` is annotated on this slice (an all-zero mask then
  means "known lesion-free"); otherwise the slice adds no segmentation/detection loss for ``t``;
* ``seg_weight[n]``: pseudo-labels weigh less than doctors' labels.

Splits are decided per source by a ``holdout`` rule in the config (whole source, none, or the
last fraction of the naturally sorted files per class folder, which keeps neighbouring slice
numbers - often the same patient - on one side). Unreadable files are reported and skipped.
"""
from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from ChestCTMTLLib.representation import (Representation, geometry_for_image, geometry_for_volume,
                                          hu_slices_to_model, load_gray8)
from ChestCTMTLLib.results import CLASS_NAMES, LESION_TYPES
from ChestCTMTLLib.volume import ijk_to_ras_from_itk

log = logging.getLogger("ChestCTMTLTraining")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class SampleSet:
    name: str
    split: str
    images: np.ndarray  # (N, S, S) float16 unit
    classes: np.ndarray  # (N,) int64, -1 = none
    masks: np.ndarray  # (N, T, S, S) uint8 0..255 (soft allowed)
    mask_present: np.ndarray  # (N, T) bool
    seg_weight: np.ndarray  # (N,) float32
    ids: List[str]
    kind: str = "slice"  # "slice" | "patch" (MSD: assembled into mosaics)
    meta: List[dict] = field(default_factory=list)  # per sample: paths, scan, k, geometry
    skipped: List[str] = field(default_factory=list)
    volumes: List[dict] = field(default_factory=list)  # per scan: nodules in mm for FROC

    def __len__(self) -> int:
        return len(self.ids)

    def summary(self) -> str:
        cls = {CLASS_NAMES[c]: int((self.classes == c).sum()) for c in range(len(CLASS_NAMES))}
        return "%s[%s]: %d samples, classes %s, masks %s, skipped %d" % (
            self.name, self.split, len(self), cls, self.mask_present.sum(axis=0).tolist(), len(self.skipped))


def natural_key(path) -> list:
    s = Path(path).name
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def split_items(items: Sequence, holdout: Optional[dict], split: str) -> list:
    """Apply a holdout rule to naturally sorted ``items``; returns those of ``split``."""
    items = sorted(items, key=natural_key)
    mode = (holdout or {}).get("mode", "none")
    if mode == "none":
        val = []
    elif mode == "all":
        val = list(items)
    elif mode == "last_fraction":
        n_val = int(round(len(items) * float(holdout.get("fraction", 0.2))))
        val = items[len(items) - n_val:] if n_val else []
    elif mode == "names":
        names = set(holdout.get("names", []))
        val = [p for p in items if Path(p).name in names or Path(p).stem in names]
    else:
        raise ValueError("unknown holdout mode %r" % mode)
    vset = set(map(str, val))
    if split == "val":
        return val
    if split == "train":
        return [p for p in items if str(p) not in vset]
    if split == "all":
        return items
    raise ValueError("split must be train, val or all")


def _empty(name, split, rep, n_types):
    s = rep.input_size
    return SampleSet(name, split, np.zeros((0, s, s), np.float16), np.zeros(0, np.int64),
                     np.zeros((0, n_types, s, s), np.uint8), np.zeros((0, n_types), bool),
                     np.zeros(0, np.float32), [])


def _build(name, split, rep, rows, n_types, kind="slice", skipped=None, volumes=None) -> SampleSet:
    if not rows:
        out = _empty(name, split, rep, n_types)
        out.skipped = skipped or []
        return out
    return SampleSet(
        name, split,
        np.stack([r["image"] for r in rows]).astype(np.float16),
        np.array([r["cls"] for r in rows], np.int64),
        np.stack([r["mask"] for r in rows]).astype(np.uint8),
        np.stack([r["present"] for r in rows]).astype(bool),
        np.array([r.get("weight", 1.0) for r in rows], np.float32),
        [r["id"] for r in rows], kind, [r.get("meta", {}) for r in rows], skipped or [], volumes or [])


def class_index(name: Optional[str]) -> int:
    if name is None or name == "" or str(name).lower() in ("none", "null", "drop"):
        return -1
    if name not in CLASS_NAMES:
        raise ValueError("unknown class %r (known: %s)" % (name, CLASS_NAMES))
    return CLASS_NAMES.index(name)


def type_index(name: str, lesion_types: Sequence[str]) -> int:
    if name not in lesion_types:
        raise ValueError("unknown lesion type %r (known: %s)" % (name, list(lesion_types)))
    return list(lesion_types).index(name)


# --------------------------------------------------------------------------- 2D image sources

def _mask_to_model(mask_unit: np.ndarray, geom) -> np.ndarray:
    """Soft [0,1] mask at image size -> uint8 0..255 at model size (bilinear, like the image)."""
    m = geom.to_model(torch.from_numpy(mask_unit.astype(np.float32)))[0, 0].numpy()
    return np.clip(np.rint(m * 255.0), 0, 255).astype(np.uint8)


def load_covid_semiseg(spec: dict, split: str, rep: Representation, root: Path,
                       lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    """COVID-SemiSeg folder with Imgs/ and GT/: kind doctor (0/255), multiclass (0/1/2), pseudo (0..255)."""
    folder = root / spec["path"]
    kind = spec.get("kind", "doctor")
    imgs_dir, gt_dir = folder / "Imgs", folder / "GT"
    if not imgs_dir.is_dir() or not gt_dir.is_dir():
        raise FileNotFoundError("COVID-SemiSeg folder %s needs Imgs/ and GT/" % folder)
    t = type_index(spec.get("lesion_type", "covid-infection"), lesion_types)
    weight = float(spec.get("weight_seg", 0.5 if kind == "pseudo" else 1.0))
    cls = class_index(spec.get("class", "covid"))
    files = [p for p in imgs_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS]
    files = split_items(files, spec.get("holdout"), split)
    rows, skipped = [], []
    for p in files:
        gts = [g for g in gt_dir.glob(p.stem + ".*") if g.suffix.lower() in IMAGE_EXTS]
        try:
            if not gts:
                raise FileNotFoundError("no mask for %s in %s" % (p.name, gt_dir))
            img = load_gray8(p)
            from PIL import Image

            with Image.open(gts[0]) as im:
                gt = np.asarray(im.convert("L")).astype(np.float32)
            if gt.shape != img.shape:
                raise ValueError("mask %s is %s but image is %s" % (gts[0].name, gt.shape, img.shape))
            if kind == "multiclass":
                unit = (gt > 0).astype(np.float32)  # 1 GGO, 2 consolidation -> infection
            elif kind == "pseudo":
                unit = gt / 255.0
            else:
                unit = (gt >= 128).astype(np.float32)
            geom = geometry_for_image(img.shape, rep.input_size)
            mask = np.zeros((len(lesion_types), rep.input_size, rep.input_size), np.uint8)
            mask[t] = _mask_to_model(unit, geom)
            present = np.ones(len(lesion_types), bool)  # COVID slices: no nodule annotations,
            # but also no tumours in this collection - nodule-mass is known-absent
            if not spec.get("other_types_absent", True):
                present[:] = False
                present[t] = True
            x = geom.to_model(torch.from_numpy(img))[0, 0].numpy()
            rows.append({"image": x, "cls": cls, "mask": mask, "present": present, "weight": weight,
                         "id": "%s/%s" % (spec.get("name", kind), p.name),
                         "meta": {"image": str(p), "mask": str(gts[0]), "kind": kind,
                                  "geometry": geom.to_dict()}})
        except (OSError, ValueError) as e:
            log.warning("skipping %s: %s", p, e)
            skipped.append("%s: %s" % (p, e))
    return _build(spec.get("name", "covid-" + kind), split, rep, rows, len(lesion_types), skipped=skipped)


def load_image_folder(spec: dict, split: str, rep: Representation, root: Path,
                      lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    """Class = sub-folder name, mapped through ``mapping`` (None drops the folder)."""
    folder = root / spec["path"]
    if not folder.is_dir():
        raise FileNotFoundError("image folder %s does not exist" % folder)
    mapping = spec.get("mapping") or {}
    lesion_free = set(spec.get("lesion_free", []))
    rows, skipped = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        target = mapping.get(sub.name, sub.name if sub.name in CLASS_NAMES else None)
        cls = class_index(target)
        if cls < 0:
            log.info("image folder %s: class folder %s not mapped, dropped", folder, sub.name)
            continue
        files = [p for p in sub.iterdir() if p.suffix.lower() in IMAGE_EXTS]
        for p in split_items(files, spec.get("holdout"), split):
            try:
                img = load_gray8(p)
                x, geom = None, geometry_for_image(img.shape, rep.input_size)
                x = geom.to_model(torch.from_numpy(img))[0, 0].numpy()
            except (OSError, ValueError) as e:
                log.warning("skipping %s: %s", p, e)
                skipped.append("%s: %s" % (p, e))
                continue
            present = np.full(len(lesion_types), sub.name in lesion_free, bool)
            rows.append({"image": x, "cls": cls, "present": present,
                         "mask": np.zeros((len(lesion_types), rep.input_size, rep.input_size), np.uint8),
                         "id": "%s/%s/%s" % (spec.get("name", folder.name), sub.name, p.name),
                         "meta": {"image": str(p), "folder": sub.name, "geometry": geom.to_dict()}})
    return _build(spec.get("name", folder.name), split, rep, rows, len(lesion_types), skipped=skipped)


# --------------------------------------------------------------------------- volumes

def _volume_rows(name, hu, spacing, lesion_mask, rep, spec, lesion_types, nodules_kji, scan_id):
    """Slices of a (K, H, W) HU volume with an optional nodule label mask, as sample rows."""
    t = type_index(spec.get("lesion_type", "nodule-mass"), lesion_types)
    geom, region = geometry_for_volume(hu, spacing, rep)
    pos_cls = class_index(spec.get("nodule_class", "cancer"))
    neg_cls = class_index(spec.get("negative_class", "non-covid"))
    gap_mm = float(spec.get("negative_gap_mm", 10.0))
    lesion_k = np.nonzero(lesion_mask.reshape(lesion_mask.shape[0], -1).any(axis=1))[0] \
        if lesion_mask is not None else np.zeros(0, int)
    stride = int(spec.get("slice_stride", 1))
    rows = []
    ks = region.slices[::stride]
    ks = np.union1d(ks, lesion_k)  # every slice through a lesion is used
    for k0 in range(0, len(ks), 32):
        kk = ks[k0:k0 + 32]
        x = hu_slices_to_model(hu[kk], geom, rep)[:, 0].numpy()
        if lesion_mask is not None:
            m = geom.to_model(torch.from_numpy((lesion_mask[kk] > 0).astype(np.float32)))[:, 0].numpy()
        for n, k in enumerate(kk):
            mask = np.zeros((len(lesion_types), rep.input_size, rep.input_size), np.uint8)
            present = np.zeros(len(lesion_types), bool)
            if lesion_mask is not None:
                mask[t] = np.clip(np.rint(m[n] * 255), 0, 255).astype(np.uint8)
                present[:] = True  # LIDC/lung-cancer scans: no COVID infection
            dist = np.min(np.abs(lesion_k - k)) * spacing[2] if lesion_k.size else np.inf
            if k in lesion_k:
                cls = pos_cls
            elif dist > gap_mm:
                cls = neg_cls
            else:
                cls = -1  # near a lesion's end: ambiguous, no class label
            rows.append({"image": x[n], "cls": cls, "mask": mask, "present": present,
                         "id": "%s:k%03d" % (scan_id, k),
                         "meta": {"scan": scan_id, "k": int(k), "geometry": geom.to_dict(),
                                  "spacing": list(spacing)}})
    volume = {"scan": scan_id, "spacing": list(spacing), "shape": list(hu.shape),
              "geometry": geom.to_dict(), "slices": [int(k) for k in ks],
              "nodules": nodules_kji}
    return rows, volume


def load_lidc_dicom(spec: dict, split: str, rep: Representation, root: Path,
                    lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    from .lidc import find_series_dirs, read_lidc_case

    base = root / spec["path"]
    series = find_series_dirs(base)
    if not series:
        raise FileNotFoundError("no DICOM series under %s" % base)
    series = split_items(series, spec.get("holdout"), split)
    rows, skipped, volumes = [], [], []
    for sd in series:
        try:
            case = read_lidc_case(sd, min_readers=int(spec.get("min_readers", 2)))
        except (OSError, ValueError, RuntimeError) as e:
            log.warning("skipping LIDC series %s: %s", sd, e)
            skipped.append("%s: %s" % (sd, e))
            continue
        scan_id = spec.get("name", base.name)
        if len(series) > 1:
            scan_id = "%s/%s" % (scan_id, sd.name[-8:])
        nods = [{"centroid_kji": list(n.centroid_kji), "diameter_mm": n.equivalent_diameter_mm,
                 "bbox_kji": list(n.bbox_kji), "malignancy": n.malignancy} for n in case.nodules]
        r, vol = _volume_rows(spec.get("name", "lidc"), case.hu, case.spacing, case.consensus, rep, spec,
                              lesion_types, nods, scan_id)
        vol["source"] = str(sd)
        vol["ijk_to_ras"] = np.asarray(case.ijk_to_ras, float).tolist()  # centroid_kji -> RAS
        rows += r
        volumes.append(vol)
    return _build(spec.get("name", "lidc"), split, rep, rows, len(lesion_types), skipped=skipped,
                  volumes=volumes)


def read_oriented(path):
    """Read a volume and reorient it to ITK LPS (axial, rows anterior->posterior)."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    if img.GetDimension() != 3:
        raise ValueError("%s is not a 3D image" % path)
    return sitk.DICOMOrient(img, "LPS")


def load_volume_pair(spec: dict, split: str, rep: Representation, root: Path,
                     lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    """NIfTI/NRRD image (HU) + lesion mask (>= ``mask_threshold``) with an optional nodules CSV."""
    import SimpleITK as sitk

    if split == "train" and (spec.get("holdout") or {}).get("mode") == "all":
        return _empty(spec.get("name", "volume"), split, rep, len(lesion_types))
    if split == "val" and (spec.get("holdout") or {}).get("mode", "none") == "none":
        return _empty(spec.get("name", "volume"), split, rep, len(lesion_types))
    img_path, mask_path = root / spec["image"], root / spec["mask"]
    try:
        img = read_oriented(img_path)
        msk = read_oriented(mask_path)
    except (RuntimeError, ValueError) as e:
        log.warning("skipping %s: %s", img_path, e)
        out = _empty(spec.get("name", "volume"), split, rep, len(lesion_types))
        out.skipped.append("%s: %s" % (img_path, e))
        return out
    hu = sitk.GetArrayFromImage(img).astype(np.int16)
    mask = sitk.GetArrayFromImage(msk)
    if mask.shape != hu.shape:
        raise ValueError("mask %s shape %s != image %s" % (mask_path, mask.shape, hu.shape))
    mask = (mask >= float(spec.get("mask_threshold", 1))).astype(np.uint8)
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sp = img.GetSpacing()
    nods = []
    for lab in range(1, n + 1):
        kk, jj, ii = np.nonzero(labels == lab)
        vol = len(kk) * sp[0] * sp[1] * sp[2]
        if vol < float(spec.get("min_volume_mm3", 10.0)):
            continue  # one-voxel reader marks of < 3 mm nodules
        nods.append({"centroid_kji": [float(kk.mean()), float(jj.mean()), float(ii.mean())],
                     "diameter_mm": float((6 * vol / np.pi) ** (1 / 3)),
                     "bbox_kji": [int(kk.min()), int(kk.max()) + 1, int(jj.min()), int(jj.max()) + 1,
                                  int(ii.min()), int(ii.max()) + 1]})
    keep = np.isin(labels, [lab for lab in range(1, n + 1)
                            if (labels == lab).sum() * sp[0] * sp[1] * sp[2] >= float(spec.get("min_volume_mm3", 10.0))])
    scan_id = spec.get("name", Path(spec["image"]).parent.name)
    rows, vol = _volume_rows(scan_id, hu, sp, keep.astype(np.uint8), rep, spec, lesion_types, nods, scan_id)
    vol["source"] = str(img_path)
    vol["ijk_to_ras"] = ijk_to_ras_from_itk(img.GetSpacing(), img.GetOrigin(), img.GetDirection()).tolist()
    if spec.get("csv"):
        vol["csv"] = _read_csv(root / spec["csv"])
    return _build(scan_id, split, rep, rows, len(lesion_types), volumes=[vol])


def _read_csv(path: Path) -> List[dict]:
    if not path.is_file():
        log.warning("lesion CSV %s missing", path)
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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
        out = _empty(spec.get("name", "msd"), split, rep, n_t)
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


ADAPTERS = {
    "covid_semiseg": load_covid_semiseg,
    "image_folder": load_image_folder,
    "lidc_dicom": load_lidc_dicom,
    "volume_pair": load_volume_pair,
    "msd_h5": load_msd_h5,
}


def load_source(spec: dict, split: str, rep: Representation, root: Path,
                lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    kind = spec.get("type")
    if kind not in ADAPTERS:
        raise ValueError("unknown source type %r (known: %s)" % (kind, sorted(ADAPTERS)))
    out = ADAPTERS[kind](spec, split, rep, Path(root), lesion_types)
    out.name = spec.get("name", out.name)
    return limit_samples(out, spec.get("max_samples"))


def limit_samples(s: SampleSet, limit: Optional[int]) -> SampleSet:
    """At most ``limit`` samples, spread evenly over the set (quick evaluations, tests)."""
    if limit and len(s) > int(limit):
        return subset(s, np.linspace(0, len(s) - 1, int(limit)).round().astype(int))
    return s


def subset(s: SampleSet, idx) -> SampleSet:
    idx = np.asarray(idx)
    return SampleSet(s.name, s.split, s.images[idx], s.classes[idx], s.masks[idx], s.mask_present[idx],
                     s.seg_weight[idx], [s.ids[i] for i in idx], s.kind,
                     [s.meta[i] for i in idx] if s.meta else [], s.skipped, s.volumes)


def json_default(o):
    """``json.dump(default=...)`` for numpy scalars and arrays in metrics, metas and packs."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError("not JSON serialisable: %r" % type(o))


def read_gt_original(meta: dict) -> np.ndarray:
    """A slice's ground-truth infection mask at its original resolution (from a pack or the file)."""
    if meta.get("gt_array") is not None:
        return np.asarray(meta["gt_array"]).astype(bool)
    from PIL import Image

    with Image.open(meta["mask"]) as im:
        gt = np.asarray(im.convert("L"))
    return gt > 0 if meta.get("kind") == "multiclass" else gt >= 128


def load_split(cfg: dict, split: str, rep: Representation, lesion_types: Sequence[str] = LESION_TYPES,
               specs: Optional[Sequence[dict]] = None) -> List[SampleSet]:
    """A config's samples for ``split``: from its ``data_pack`` when it names one, else the sources."""
    specs = list(cfg["sources"]) if specs is None else list(specs)
    if cfg.get("data_pack"):
        from .pack import read_pack

        by_name = {s.get("name"): s for s in specs}
        sets = read_pack(cfg["data_pack"], split, rep, cfg["sources"], lesion_types)
        return [limit_samples(s, by_name[s.name].get("max_samples")) for s in sets
                if s.name in by_name and len(s)]
    from .train import resolve_root

    return load_sources(specs, split, rep, resolve_root(cfg), lesion_types)


def load_sources(specs: Sequence[dict], split: str, rep: Representation, root: Path,
                 lesion_types: Sequence[str] = LESION_TYPES) -> List[SampleSet]:
    out = []
    for spec in specs:
        s = load_source(spec, split, rep, root, lesion_types)
        log.info(s.summary())
        if len(s):
            out.append(s)
    return out


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
