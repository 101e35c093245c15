"""The training loop: joint / single-task / staged regimes, checkpoints, resume, DDP, export.

Under ``torchrun`` the same command runs DistributedDataParallel (gloo on CPU, NCCL on GPU);
each rank draws its own batches (seeded by rank and step), gradients are averaged by DDP, and
BatchNorm buffers are broadcast from rank 0 before saving so every rank ends with identical
weights. Checkpoints hold model + optimizer + step and are written atomically; batches depend
only on (seed, rank, step) and the learning rate only on the step, so a resumed run continues
exactly where it stopped.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from ChestCTMTLLib import __version__
from ChestCTMTLLib.model import ModelConfig, MultiTaskNet, count_parameters
from ChestCTMTLLib.modelio import save_model_folder
from ChestCTMTLLib.representation import Representation
from ChestCTMTLLib.results import CLASS_NAMES, LESION_TYPES

from .batching import MixedSampler
from .config import model_tasks, representation_of, resolve_root, stage_plan  # noqa: F401 (re-exported)
from .copy_paste import generated_sources
from .loading import load_split
from .losses import MultiTaskLoss

log = logging.getLogger("ChestCTMTLTraining")

LOG_COLUMNS = ["step", "stage", "lr", "loss", "classification", "segmentation", "reconstruction",
               "detection", "seconds"]


class TrainingError(RuntimeError):
    pass


def model_config_of(cfg: dict) -> ModelConfig:
    m = dict(cfg["model"])
    m["tasks"] = model_tasks(cfg)
    m.setdefault("class_names", CLASS_NAMES)
    m.setdefault("lesion_types", LESION_TYPES)
    return ModelConfig.from_dict(m)


# Heads a fine-tune may add to the network it starts from; everything else must match.
ADDABLE_HEADS = {"infection_types": ("seg_decoder.type_out.",)}


def init_weights(model: MultiTaskNet, mcfg: ModelConfig, source, device,
                 rep: Optional[Representation] = None) -> tuple:
    """Load weights for a fine-tune from a run's ``checkpoint.pt`` (or its folder), a model
    folder (``model.json`` + safetensors, checksum verified) or a registered model's id.

    The source must have this architecture, except for heads in ``ADDABLE_HEADS`` that this
    config adds (e.g. the infection-type head on a binary model): those start from their random
    initialisation. Returns (the new tensors' prefixes, a description of the source)."""
    from ChestCTMTLLib.modelio import ModelLoadError, load_model

    path = Path(str(source)).expanduser()
    if not path.exists():  # a registered model's id
        from ChestCTMTLLib.registry import ModelNotFoundError, resolve_model_folder
        try:
            path = resolve_model_folder(str(source))
        except ModelNotFoundError:
            pass
    if path.is_dir() and (path / "checkpoint.pt").is_file():
        path = path / "checkpoint.pt"
    if path.is_dir():
        try:
            loaded = load_model(path, device="cpu")
        except ModelLoadError as e:
            raise TrainingError("init_from %s: %s" % (source, e)) from None
        arch, state = loaded.config.to_dict(), loaded.model.state_dict()
        if rep is not None and loaded.representation.to_dict() != rep.to_dict():
            raise TrainingError("init_from %s was trained on another input representation (%s, not %s)"
                                % (source, loaded.representation.to_dict(), rep.to_dict()))
        origin = "%s %s (%s)" % (loaded.identity.id, loaded.identity.version, path)
    elif path.is_file():
        init = torch.load(path, map_location="cpu", weights_only=False)
        arch, state = init.get("architecture"), init["model"]
        origin = "%s (step %s)" % (path, init.get("step"))
    else:
        raise TrainingError("init_from %s: no such checkpoint or model folder" % source)
    want = mcfg.to_dict()
    added = [k for k in ADDABLE_HEADS if want.get(k) and not (arch or {}).get(k)]
    if {k: v for k, v in (arch or {}).items() if k not in added} != \
            {k: v for k, v in want.items() if k not in added}:
        raise TrainingError("init_from %s has another architecture" % source)
    prefixes = tuple(p for k in added for p in ADDABLE_HEADS[k])
    expected = model.state_dict()
    missing = sorted(k for k in set(expected) - set(state) if not k.startswith(prefixes))
    if missing or set(state) - set(expected):
        raise TrainingError("init_from %s does not match this network (e.g. %s)"
                            % (source, (missing or sorted(set(state) - set(expected)))[:3]))
    model.load_state_dict(state, strict=False)
    model.to(device)
    return [p.rstrip(".") for p in prefixes], origin


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp-%d" % os.getpid())
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lr_at(step_in_stage: int, stage_steps: int, base_lr: float, warmup: int) -> float:
    if step_in_stage < warmup:
        return base_lr * (step_in_stage + 1) / warmup
    frac = (step_in_stage - warmup) / max(1, stage_steps - warmup)
    return base_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _rewrite_log(path: Path, upto_step: int) -> None:
    """On resume, drop log rows written after the checkpoint so the CSV has no duplicates."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= upto_step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def plot_curves(log_csv: Path, out_png: Path) -> Optional[Path]:
    """Training-loss curves (raw and smoothed) per task; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_csv.is_file():
        return None
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    steps = np.array([int(r["step"]) for r in rows])
    fig, axes = plt.subplots(1, 5, figsize=(20, 3.6))
    for ax, key in zip(axes, ["loss", "classification", "segmentation", "reconstruction", "detection"]):
        vals = np.array([float(r[key]) if r[key] not in ("", None) else np.nan for r in rows])
        ok = np.isfinite(vals)
        if ok.any():
            ax.plot(steps[ok], vals[ok], alpha=0.3, lw=0.8)
            k = max(1, ok.sum() // 30)
            sm = np.convolve(vals[ok], np.ones(k) / k, mode="valid")
            ax.plot(steps[ok][k - 1:], sm, lw=1.6)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "reconstruction" and ok.any() and np.nanmin(vals) > 0:
            ax.set_yscale("log")
    fig.tight_layout()
    tmp = out_png.with_name(out_png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png


def build_sampler(cfg: dict, rep: Representation, rank: int, lesion_types=LESION_TYPES):
    specs = [s for s in cfg["sources"] if s.get("use_for_training", True)]
    sets = load_split(cfg, "train", rep, lesion_types, specs)
    weights = []
    for s in sets:
        spec = next(sp for sp in specs if sp.get("name", s.name) == s.name)
        weights.append(float(spec.get("weight", 1.0)))
    sampler = MixedSampler(sets, weights, rep.input_size, len(CLASS_NAMES), cfg["augmentation"],
                           seed=int(cfg["seed"]), rank=rank,
                           class_balance=bool(cfg["train"].get("class_balance", True)),
                           extras=generated_sources(cfg, sets, rep.hu_window, lesion_types))
    return sampler, sets


class _StepBatches(torch.utils.data.Dataset):
    """Item ``i`` is the batch of step ``first + i``: loader workers change speed, never content."""

    def __init__(self, sampler, first: int, count: int, st: dict):
        self.sampler, self.first, self.count, self.st = sampler, first, count, st

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        st = self.st
        return self.sampler.batch(self.first + i, int(st["batch_size"]), st.get("crop_size"),
                                  st.get("lesion_crop_p", 0.5))


def _one_thread(_worker_id) -> None:
    torch.set_num_threads(1)


def stage_batches(sampler, first: int, count: int, st: dict, workers: int, pin: bool):
    """Batches for steps first, first+1, ...: in this process, or built ahead by ``workers``
    processes (a GPU outruns one CPU core building augmented batches)."""
    ds = _StepBatches(sampler, first, count, st)
    if workers <= 0:
        return (ds[i] for i in range(count))
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                            pin_memory=pin, prefetch_factor=4, worker_init_fn=_one_thread))


def stage_load(st: dict, input_size: int) -> float:
    """Relative cost of one step of a stage: pixels per batch."""
    side = int(st.get("crop_size") or input_size)
    return float(st["batch_size"]) * side * side


def rescale_stages(stages: List[dict], k: int, done_in_stage: int, seconds_per_step: float,
                   seconds_left: float, input_size: int) -> float:
    """Scale the rest of stage ``k`` and all later stages so they end in ``seconds_left``.

    Later stages' step times are predicted from this stage's by pixels per batch. Returns the
    factor used (clamped to [0.05, 20]); ``stages`` is changed in place.
    """
    lk = stage_load(stages[k], input_size)
    rest = (stages[k]["steps"] - done_in_stage) + sum(
        s["steps"] * stage_load(s, input_size) / lk for s in stages[k + 1:])
    f = min(20.0, max(0.05, seconds_left / max(1e-9, rest * seconds_per_step)))
    stages[k]["steps"] = max(done_in_stage + 1, done_in_stage + int(round((stages[k]["steps"] - done_in_stage) * f)))
    for s in stages[k + 1:]:
        s["steps"] = max(1, int(round(s["steps"] * f)))
    return f


def _over_budget(late: bool, world: int, device) -> bool:
    """True on every rank when any rank is past the time budget (ranks must stop together)."""
    if world > 1:
        flag = torch.tensor(float(late), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
    return late


def run_training(cfg: dict, output, resume: bool = False, export: bool = True,
                 progress: bool = True) -> Dict:
    """Train per ``cfg`` into ``output``; returns a summary dict (also written as summary.json)."""
    from tqdm import tqdm

    output = Path(output)
    world, rank, local = _dist_info()
    tcfg = cfg["train"]
    torch.set_num_threads(int(tcfg.get("threads", 2)))
    use_cuda = torch.cuda.is_available() and tcfg.get("device", "auto") != "cpu"
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(device)
    is_main = rank == 0
    output.mkdir(parents=True, exist_ok=True)
    ckpt_path = output / "checkpoints" / "last.pt"
    log_csv = output / "train_log.csv"

    torch.manual_seed(int(cfg["seed"]))
    np.random.seed(int(cfg["seed"]))
    rep = representation_of(cfg)
    mcfg = model_config_of(cfg)
    model = MultiTaskNet(mcfg).to(device)
    sampler, sets = build_sampler(cfg, rep, rank, mcfg.lesion_types)
    if is_main:
        for s in sets:
            print(s.summary(), flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]))
    loss_fn = MultiTaskLoss(cfg["loss"], len(CLASS_NAMES), cfg["loss"].get("class_weights"), mcfg.lesion_types)
    stages = stage_plan(cfg)
    budget = float(tcfg.get("time_budget_s") or 0)  # fit the schedule to a wall-clock budget
    probe = int(tcfg.get("budget_probe_steps", 60))
    workers = int(tcfg.get("workers", 0))

    start = 0
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck.get("architecture") != mcfg.to_dict():
            raise TrainingError("checkpoint %s was made with another architecture; use a new --output"
                                % ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start = int(ck["step"])
        for st_, n_ in zip(stages, ck.get("stage_steps") or []):
            st_["steps"] = int(n_)  # a time-budgeted run resumes with the schedule it had fixed
        if is_main:
            print("resumed from %s at step %d" % (ckpt_path, start), flush=True)
            _rewrite_log(log_csv, start)
    elif tcfg.get("init_from"):
        # fine-tune: weights only (fresh optimizer and schedule) from another run or a model folder
        fresh, origin = init_weights(model, mcfg, tcfg["init_from"], device, rep)
        if is_main:
            print("initialised from %s%s" % (origin, "; new, untrained: %s" % ", ".join(fresh)
                                              if fresh else ""), flush=True)
    if resume and not ckpt_path.is_file() and is_main:
        print("no checkpoint at %s: starting from scratch" % ckpt_path, flush=True)
    if not (resume and ckpt_path.is_file()) and is_main and log_csv.exists():
        log_csv.unlink()

    total_steps = sum(s["steps"] for s in stages)
    if use_cuda:
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local] if use_cuda else None, find_unused_parameters=False)
    amp = use_cuda and bool(tcfg.get("amp", True))
    amp_dtype = torch.bfloat16 if (amp and torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)

    def save_ckpt(step):
        if is_main:
            atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                               "architecture": mcfg.to_dict(), "config": cfg,
                               "stage_steps": [s["steps"] for s in stages]}, ckpt_path)

    bs = int(tcfg["batch_size"])
    nan_streak, nan_total = 0, 0
    t0 = time.time()
    step_times: List[float] = []
    last_parts: Dict[str, float] = {}
    bar = tqdm(total=total_steps, initial=start, desc="train", disable=not (progress and is_main),
               dynamic_ncols=True)
    log_file = None
    tb = None
    if is_main and tcfg.get("tensorboard", True):
        try:  # optional: only when the tensorboard package is installed
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(output / "tensorboard"))
        except ImportError:
            tb = None
    if is_main:
        new = not log_csv.exists()
        log_file = open(log_csv, "a", newline="")
        writer = csv.DictWriter(log_file, fieldnames=LOG_COLUMNS)
        if new:
            writer.writeheader()
    model.train()
    step = start
    stop_after = int(tcfg.get("stop_after") or 0)  # pause point (resume later with --resume)
    stopped = False
    stage_start = 0
    scale_factors: List[float] = []
    over_budget = False
    try:
        for si, st in enumerate(stages):
            name, tasks, n_steps = st["name"], st["tasks"], st["steps"]
            bs = int(st["batch_size"])
            stage_end = stage_start + n_steps
            first_in_run = max(step, stage_start)
            ahead = (stage_end - first_in_run) * (20 if budget else 1)
            batches = stage_batches(sampler, first_in_run, max(0, ahead), st, workers, use_cuda) \
                if step < stage_end else iter(())
            while step < stage_end:
                ts = time.time()
                # dropout & co. draw from torch's RNG: seed it per step so a resumed run matches
                torch.manual_seed((int(cfg["seed"]) * 1000003 + rank * 7919 + step) % (2 ** 63))
                lr = lr_at(step - stage_start, n_steps, float(st["lr"]), int(tcfg.get("warmup_steps", 50)))
                for g in opt.param_groups:
                    g["lr"] = lr
                batch = {key: v.to(device, non_blocking=True) for key, v in next(batches).items()}
                if use_cuda:
                    batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                    out = net(batch["image"], tasks=tasks)
                out = {key: v.float() for key, v in out.items()}  # losses (logs, ratios) in float32
                total, parts = loss_fn(out, batch, tasks)
                # keep every computed head in the graph (DDP needs each used parameter to get a grad)
                total = total + 0.0 * sum(v.mean() for v in out.values())
                finite = torch.isfinite(total).float()
                if world > 1:
                    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                opt.zero_grad(set_to_none=True)
                if finite.item() < 1:
                    nan_streak += 1
                    nan_total += 1
                    if is_main:
                        print("step %d: non-finite loss, step skipped (%d in a row)" % (step, nan_streak), flush=True)
                    if nan_streak >= int(tcfg.get("max_nan_steps", 20)):
                        raise TrainingError("%d non-finite losses in a row at step %d; last good checkpoint "
                                            "is %s" % (nan_streak, step, ckpt_path))
                    step += 1
                    bar.update(1)
                    continue
                nan_streak = 0
                scaler.scale(total).backward()
                if tcfg.get("grad_clip"):
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(tcfg["grad_clip"]))
                scaler.step(opt)
                scaler.update()
                step += 1
                dt = time.time() - ts
                step_times.append(dt)
                last_parts = {k: float(v.detach()) for k, v in parts.items()}
                bar.update(1)
                if is_main:
                    bar.set_postfix(loss="%.3f" % float(total.detach()), stage=name)
                    if step % int(tcfg.get("log_every", 10)) == 0 or step == stage_end:
                        row = {"step": step, "stage": name, "lr": "%.6g" % lr, "loss": "%.5f" % float(total.detach()),
                               "seconds": "%.3f" % dt}
                        for k in ("classification", "segmentation", "reconstruction", "detection"):
                            row[k] = "%.5f" % last_parts[k] if k in last_parts else ""
                        writer.writerow(row)
                        log_file.flush()
                        if tb is not None:
                            tb.add_scalar("loss/total", float(total.detach()), step)
                            for k, v in last_parts.items():
                                tb.add_scalar("loss/" + k, v, step)
                            tb.add_scalar("lr", lr, step)
                if step % int(tcfg.get("checkpoint_every", 100)) == 0:
                    save_ckpt(step)
                if budget and step - first_in_run == probe and len(step_times) >= probe // 2:
                    measured = torch.tensor([float(np.median(step_times[-(probe // 2):])),
                                             budget - (time.time() - t0)], dtype=torch.float64)
                    if world > 1:  # every rank must take rank 0's plan
                        measured = measured.to(device)
                        dist.broadcast(measured, src=0)
                    f = rescale_stages(stages, si, step - stage_start, float(measured[0]), float(measured[1]),
                                       mcfg.input_size)
                    scale_factors.append(round(f, 4))
                    n_steps = st["steps"]
                    stage_end = stage_start + n_steps
                    total_steps = sum(s["steps"] for s in stages)
                    bar.total = total_steps
                    print("time budget: stage %s scaled by %.3f -> %d steps; plan %s" % (
                        name, f, n_steps, [s["steps"] for s in stages]), flush=True)
                if budget and _over_budget(time.time() - t0 > 1.15 * budget, world, device):
                    over_budget = True
                    print("time budget exceeded by 15%% at step %d: stopping here" % step, flush=True)
                    break
                if stop_after and step >= stop_after:
                    break
            del batches
            if over_budget:
                break
            if stop_after and step >= stop_after and step < total_steps:
                stopped = True
                break
            if is_main and len(stages) > 1 and start < stage_end:  # a stage finished in this run
                atomic_torch_save({"model": model.state_dict(), "step": step, "architecture": mcfg.to_dict()},
                                  output / "checkpoints" / ("stage-%s.pt" % name))
            stage_start = stage_end
    finally:
        bar.close()
        if log_file:
            log_file.close()
        if tb is not None:
            tb.close()
    if world > 1:
        # BatchNorm running stats are rank-local after the last forward: make them rank 0's.
        for buf in model.buffers():
            dist.broadcast(buf, src=0)
        dist.barrier()
    save_ckpt(step)
    if world > 1:
        (output / ("rank%d_weights.sha256" % rank)).write_text(state_digest(model) + "\n")
    elapsed = time.time() - t0
    summary = {
        "steps": step, "resumed_from": start, "elapsed_s": round(elapsed, 1),
        "seconds_per_step": round(float(np.median(step_times)), 4) if step_times else None,
        "batch_size": bs, "world_size": world, "device": str(device), "nan_steps": nan_total,
        "final_losses": last_parts, "parameters": count_parameters(model),
        "train_samples": {s.name: len(s) for s in sets},
        "skipped": [x for s in sets for x in s.skipped],
        "stopped_early": stopped,
        "time_budget_s": budget or None, "schedule_scale_factors": scale_factors,
        "stopped_by_time_budget": over_budget, "stage_steps": [s["steps"] for s in stages],
        "loader_workers": workers,
    }
    if stopped:
        export = False
    if is_main:
        plot_curves(log_csv, output / "curves.png")
        if export:
            card = make_card(cfg, sets, summary)
            save_model_folder(model.cpu().to(memory_format=torch.contiguous_format), mcfg, card, output / "model", representation=rep)
            summary["model"] = str(output / "model")
        with open(output / "summary.json", "w") as f:
            json.dump(summary, f, indent=2)
    if world > 1:
        dist.barrier()
    return summary


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes), in a fixed order."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def make_card(cfg: dict, sets, summary: dict) -> dict:
    ex = cfg.get("export") or {}
    backbone = cfg["model"].get("backbone", "fast")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d")
    card = {
        "id": ex.get("id") or "chestctmtl-%s-%s" % (backbone, stamp),
        "version": ex.get("version") or __version__,
        "description": ex.get("description", ""),
        "intended_use": ex.get("intended_use") or
        "Research and review support for chest CT; not a diagnosis and not a medical device.",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "training": {
            "config": Path(cfg.get("_path", "")).name, "regime": cfg["train"]["regime"],
            # the stages as run (a time budget may have rescaled the configured steps)
            "stages": [{"name": st["name"], "tasks": st["tasks"], "steps": n, "batch_size": st["batch_size"],
                        "lr": st["lr"], "crop_size": st.get("crop_size")}
                       for st, n in zip(stage_plan(cfg), summary.get("stage_steps") or
                                        [st["steps"] for st in stage_plan(cfg)])],
            "init_from": cfg["train"].get("init_from"), "time_budget_s": summary.get("time_budget_s"),
            "seed": cfg["seed"],
            "loss": cfg["loss"], "steps_done": summary["steps"], "elapsed_s": summary["elapsed_s"],
            "seconds_per_step": summary["seconds_per_step"], "device": summary["device"],
            "world_size": summary["world_size"], "torch": torch.__version__, "python": platform.python_version(),
        },
        "training_data": [{"source": s.name, "samples": len(s), "skipped": len(s.skipped)} for s in sets],
        "sources_config": [{k: v for k, v in sp.items()} for sp in cfg["sources"]],
        "metrics": ex.get("metrics", {}),
        "limits": ex.get("limits", []),
    }
    generated = {k: cfg[k] for k in ("copy_paste", "hard_negatives") if (cfg.get(k) or {}).get("enabled")}
    if generated:  # copy-paste / hard-negative recipe (absent from recipes without them)
        card["generated_samples"] = generated
    return card
