"""The paper's question on our data: single-task vs multi-task, and backbones, in one table.

Every row trains with the same base config (sources, split, schedule, input size) and differs
only in tasks or backbone; every row is evaluated on the same validation split by
:func:`~ChestCTMTLTraining.evaluate.evaluate_model`. Rows are resumable (``--resume`` reuses
finished rows and continues unfinished ones from their checkpoints).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

ALL = ["classification", "segmentation", "reconstruction", "detection"]

ROWS = {
    "joint-fast": {"model": {"backbone": "fast"}, "train": {"regime": "joint", "tasks": ALL}},
    "seg-only-fast": {"model": {"backbone": "fast"}, "train": {"regime": "single", "tasks": ["segmentation"]}},
    "cls-only-fast": {"model": {"backbone": "fast"}, "train": {"regime": "single", "tasks": ["classification"]}},
    "joint-vgg13": {"model": {"backbone": "vgg13"}, "train": {"regime": "joint", "tasks": ALL}},
    "joint-resnet50": {"model": {"backbone": "resnet50"}, "train": {"regime": "joint", "tasks": ALL}},
}

COLUMNS = [("covid_dice", "COVID Dice"), ("nodule_dice", "nodule Dice"), ("accuracy", "accuracy"),
           ("cancer_vs_normal_balanced_accuracy", "cancer-vs-normal bal. acc."), ("recon_psnr", "PSNR dB"),
           ("slice_map50", "slice mAP@0.5")]


def run_ablation(config: str = "ablation", output="ablation", steps: Optional[int] = None,
                 input_size: Optional[int] = None, rows: Optional[List[str]] = None,
                 resume: bool = False, data_pack: Optional[str] = None,
                 seeds: Optional[List[int]] = None) -> str:
    """Train and evaluate each row; with ``seeds``, each row once per seed (folders
    ``<row>-seed<N>``) and the table shows mean ± standard deviation over the seeds, because one
    run per row cannot tell a 1-2 point difference from seed noise."""
    from .config import load_config
    from .evaluate import evaluate_model
    from .train import run_training

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    names = rows or list(ROWS)
    unknown = [r for r in names if r not in ROWS]
    if unknown:
        raise ValueError("unknown ablation rows %s (known: %s)" % (unknown, list(ROWS)))
    results = {}
    jobs = [(name, None) for name in names] if not seeds else [(n, int(sd)) for n in names for sd in seeds]
    for name, seed in jobs:
        over = json.loads(json.dumps(ROWS[name]))
        if seed is not None:
            over["seed"] = seed
        if steps:
            over["train"]["steps"] = int(steps)
            over["train"]["stages"] = []
        if input_size:
            over["model"]["input_size"] = int(input_size)
        if data_pack:
            over["data_pack"] = str(data_pack)
        cfg = load_config(config, over)
        run_dir = out / (name if seed is None else "%s-seed%d" % (name, seed))
        summary_path = run_dir / "summary.json"
        if resume and summary_path.is_file() and (run_dir / "model" / "model.json").is_file():
            summary = json.loads(summary_path.read_text())
        else:
            print("ablation row %s: training %s steps" % (name, cfg["train"]["steps"]), flush=True)
            summary = run_training(cfg, run_dir, resume=resume, progress=False)
        ev_path = run_dir / "eval" / "metrics.json"
        if resume and ev_path.is_file():
            metrics = json.loads(ev_path.read_text())
        else:
            metrics = evaluate_model(run_dir / "model", config, run_dir / "eval", probe_format=False, device="auto",
                                     overrides={k: over[k] for k in ("model", "data_pack") if k in over})
        results.setdefault(name, []).append(
            {"backbone": cfg["model"]["backbone"], "tasks": cfg["train"]["tasks"],
             "parameters": summary.get("parameters"), "steps": summary.get("steps"),
             "seconds_per_step": summary.get("seconds_per_step"), "seed": cfg["seed"],
             "input_size": cfg["model"]["input_size"], **metrics["headline"]})
    results = {name: combine_seeds(runs) for name, runs in results.items()}
    table = format_table(results)
    tmp = out / "ablation.md.tmp"
    tmp.write_text(table + "\n")
    os.replace(tmp, out / "ablation.md")
    (out / "ablation.json").write_text(json.dumps(results, indent=2))
    return table


def combine_seeds(runs: List[dict]) -> dict:
    """One row from runs that differ only in seed: means, plus ``sd`` when there are several."""
    import numpy as np

    row = dict(runs[0])
    if len(runs) == 1:
        return row
    row["seeds"] = [r["seed"] for r in runs]
    row["sd"] = {}
    for key, _label in COLUMNS + [("seconds_per_step", "")]:
        vals = [r.get(key) for r in runs]
        if all(isinstance(v, (int, float)) for v in vals):
            arr = np.asarray(vals, float)
            ok = arr[np.isfinite(arr)]
            row[key] = float(ok.mean()) if ok.size else float("nan")
            row["sd"][key] = float(ok.std(ddof=1)) if ok.size > 1 else float("nan")
    return row


def format_table(results: dict) -> str:
    head = ["row", "backbone", "tasks", "params", "s/step", "input"] + [c[1] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [name, r["backbone"], "+".join(t[:3] for t in r["tasks"]),
                 "%.2fM" % (r["parameters"] / 1e6) if r.get("parameters") else "",
                 "%.2f" % r["seconds_per_step"] if r.get("seconds_per_step") else "", str(r["input_size"])]
        for key, _label in COLUMNS:
            v = r.get(key)
            sd = (r.get("sd") or {}).get(key)
            cell = "—" if v is None or v != v else "%.3f" % v
            if sd is not None and sd == sd and cell != "—":
                cell += " ± %.3f" % sd
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
