"""Turn a chain of training runs into a bundled model folder for ``Resources/Models``.

A shipped model is often several runs (a first run, then continuations with ``init_from``).
The last run's ``model/`` holds the weights; this adds what a reader of the card needs: the
chain's summaries, one training log over all steps with its curves, the evaluation headline
numbers (copied from ``metrics.json``, never typed), provenance and limits.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .train import LOG_COLUMNS, plot_curves

SUMMARY_KEYS = ("steps", "resumed_from", "elapsed_s", "seconds_per_step", "device", "stage_steps",
                "time_budget_s", "schedule_scale_factors", "loader_workers", "train_samples")


def combined_log(runs: Sequence[Path], out_csv: Path) -> int:
    """Concatenate the runs' train_log.csv with steps made continuous; returns the last step."""
    offset, rows = 0, []
    for run in runs:
        with open(Path(run) / "train_log.csv", newline="") as f:
            part = list(csv.DictReader(f))
        for r in part:
            r = dict(r)
            r["step"] = str(int(r["step"]) + offset)
            r["stage"] = "%s:%s" % (Path(run).name, r["stage"])
            rows.append(r)
        offset += json.loads((Path(run) / "summary.json").read_text())["steps"]
    tmp = out_csv.with_name(out_csv.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out_csv)
    return offset


def bundle(runs: Sequence[Path], output: Path, model_id: str, version: str,
           evaluations: Dict[str, Path], card_extra: Optional[dict] = None) -> Path:
    """Copy the last run's model to ``output`` and complete its card (checksum unchanged)."""
    runs = [Path(r) for r in runs]
    src = runs[-1] / "model"
    output = Path(output)
    tmp = output.with_name(output.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    card = json.loads((tmp / "model.json").read_text())
    card["id"], card["version"] = model_id, version
    chain: List[dict] = []
    for r in runs:
        s = json.loads((r / "summary.json").read_text())
        c = json.loads((r / "model" / "model.json").read_text()).get("training", {})
        chain.append({"run": r.name, "init_from": c.get("init_from"), "stages": c.get("stages"),
                      "summary": {k: s.get(k) for k in SUMMARY_KEYS}})
    card["training"]["runs"] = chain
    card["training"]["stages"] = [  # what ran, in order (configured steps may have been rescaled)
        dict(st, name="%s:%s" % (c["run"], st["name"]), steps=int(n))
        for c in chain for st, n in zip(c["stages"] or [], c["summary"].get("stage_steps") or
                                        [st["steps"] for st in c["stages"] or []])]
    card["training"]["steps_done"] = combined_log(runs, tmp / "training_log.csv")
    card["training"]["elapsed_s"] = round(sum(c["summary"]["elapsed_s"] or 0 for c in chain), 1)
    plot_curves(tmp / "training_log.csv", tmp / "training_curves.png")
    card["metrics"] = {name: json.loads((Path(d) / "metrics.json").read_text())["headline"]
                       for name, d in evaluations.items()}
    for k, v in (card_extra or {}).items():
        if isinstance(v, dict) and isinstance(card.get(k), dict):
            card[k].update(v)
        else:
            card[k] = v
    (tmp / "model.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
    return output
