"""Command line: ``python -m ChestCTMTLTraining {train,evaluate,evaluate-volumes,calibrate,export,predict,ablation,pack,bundle}``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _parse_set(values):
    """--set a.b=value overrides (value parsed as YAML)."""
    import yaml

    out = {}
    for item in values or []:
        if "=" not in item:
            raise SystemExit("--set expects KEY=VALUE, got %r" % item)
        key, val = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return out


def _overrides(a) -> dict:
    over = _parse_set(a.set)
    if getattr(a, "pack", None):
        over["data_pack"] = a.pack
    return over


def cmd_train(a) -> int:
    from .config import load_config
    from .train import TrainingError, run_training

    cfg = load_config(a.config, _overrides(a))
    try:
        summary = run_training(cfg, a.output, resume=a.resume, export=not a.no_export,
                               progress=not a.quiet)
    except TrainingError as e:
        print("training failed: %s" % e, file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "skipped"}, indent=2))
    return 0


def cmd_export(a) -> int:
    from .export import export_checkpoint

    folder = export_checkpoint(a.checkpoint, a.output, model_id=a.id, card_extra=a.card)
    print("exported %s" % folder)
    return 0


def cmd_evaluate(a) -> int:
    from .evaluate import evaluate_model

    report = evaluate_model(a.model, a.data, a.output, split=a.split, max_per_source=a.max_per_source,
                            overrides=_overrides(a), device=a.device)
    print(json.dumps(report["headline"], indent=2))
    return 0


def cmd_evaluate_volumes(a) -> int:
    from .evaluate_volumes import evaluate_volumes

    report = evaluate_volumes(a.model, a.manifest, a.output, roles=a.roles, device=a.device,
                              progress=not a.quiet)
    print(json.dumps(report["headline"], indent=2))
    return 0


def cmd_calibrate(a) -> int:
    from .calibrate import calibrate

    summary = calibrate(a.model, a.data, a.manifest, device=a.device,
                        max_fp_per_scan=a.max_fp_per_scan, max_per_source=a.max_per_source,
                        output=a.output, progress=not a.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_predict(a) -> int:
    from .predict import predict_images

    n_ok, n_bad = predict_images(a.inputs, a.output, model=a.model)
    return 0 if n_bad == 0 and n_ok > 0 else 1


def cmd_ablation(a) -> int:
    from .ablation import run_ablation

    table = run_ablation(a.config, a.output, steps=a.steps, input_size=a.input_size, rows=a.rows,
                         resume=a.resume, data_pack=a.pack, seeds=a.seeds)
    print(table)
    return 0


def cmd_pack(a) -> int:
    from .config import load_config
    from .pack import pack_info, write_pack

    out = write_pack(load_config(a.config, _parse_set(a.set)), a.output, splits=a.splits)
    info = pack_info(out)
    info["bytes"] = out.stat().st_size
    print(json.dumps(info, indent=2))
    return 0


def cmd_bundle(a) -> int:
    from .bundle import bundle

    evals = {}
    for item in a.eval or []:
        name, _, folder = item.partition("=")
        if not folder:
            raise SystemExit("--eval expects NAME=EVAL_FOLDER, got %r" % item)
        evals[name] = Path(folder)
    extra = json.loads(Path(a.card).read_text()) if a.card else None
    print("bundled %s" % bundle(a.runs, Path(a.output), a.id, a.version, evals, extra))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ChestCTMTLTraining", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("--config", required=True, help="YAML file or packaged config name (smoke, default, ...)")
    t.add_argument("--output", required=True, help="run folder (logs, checkpoints, curves, model/)")
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last.pt")
    t.add_argument("--no-export", action="store_true")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    t.add_argument("--pack", help="read samples from this data pack instead of the sources")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="export a training checkpoint as a model folder")
    e.add_argument("checkpoint")
    e.add_argument("--output", required=True)
    e.add_argument("--id")
    e.add_argument("--card", help="JSON file merged into the model card (metrics, limits ...)")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("evaluate", help="evaluate a model folder on a config's validation split")
    v.add_argument("--model", help="model folder (default: the bundled model)")
    v.add_argument("--data", required=True, help="YAML config whose sources (val split) are evaluated")
    v.add_argument("--output", required=True, help="folder for metrics.json, report.md and plots")
    v.add_argument("--split", default="val", choices=["val", "train", "all"])
    v.add_argument("--max-per-source", type=int, default=None)
    v.add_argument("--set", action="append", metavar="KEY=VALUE")
    v.add_argument("--pack", help="read samples from this data pack instead of the sources")
    v.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    v.set_defaults(func=cmd_evaluate)

    w = sub.add_parser("evaluate-volumes", help="evaluate the shipped pipeline on labelled whole CTs")
    w.add_argument("--model", help="model folder (default: the bundled model)")
    w.add_argument("--manifest", default="volumes",
                   help="packaged manifest name (volumes), a YAML/CSV manifest or a folder with manifest.csv")
    w.add_argument("--output", default="runs/eval-volumes", help="folder for metrics.json, scans.tsv, report.md, plots")
    w.add_argument("--roles", nargs="+", default=None, choices=["calibration", "validation"])
    w.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    w.set_defaults(func=cmd_evaluate_volumes)

    c = sub.add_parser("calibrate", help="fit a model folder's calibration.json (temperature, "
                       "nodule shape rules, score threshold)")
    c.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    c.add_argument("--data", default="default", help="config whose validation split gives slices")
    c.add_argument("--manifest", default="volumes", help="whole CTs; their role=calibration scans fix the threshold")
    c.add_argument("--device", default="cpu")
    c.add_argument("--max-fp-per-scan", type=int, default=0,
                   help="false positives allowed on each calibration scan (0: headroom for unseen scans)")
    c.add_argument("--max-per-source", type=int, default=None, help="cap slices per source (quick runs)")
    c.add_argument("--output", default=None, help="where the reliability plot and summary go (default: the model folder)")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_calibrate)

    r = sub.add_parser("predict", help="classify and segment 2D 8-bit slices (PNG/JPG)")
    r.add_argument("inputs", nargs="+", help="image files or folders")
    r.add_argument("--output", required=True)
    r.add_argument("--model", help="model folder (default: the bundled model)")
    r.set_defaults(func=cmd_predict)

    b = sub.add_parser("ablation", help="single- vs multi-task and backbone comparison table")
    b.add_argument("--config", default="ablation", help="base config (sources + split)")
    b.add_argument("--output", required=True)
    b.add_argument("--steps", type=int, default=None, help="steps per row (default: config)")
    b.add_argument("--input-size", type=int, default=None)
    b.add_argument("--rows", nargs="*", default=None, help="subset of rows to run")
    b.add_argument("--resume", action="store_true", help="reuse finished rows")
    b.add_argument("--pack", help="read samples from this data pack instead of the sources")
    b.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="train every row once per seed; the table shows mean ± sd")
    b.set_defaults(func=cmd_ablation)

    n = sub.add_parser("bundle", help="make a model folder for Resources/Models from a chain of runs")
    n.add_argument("runs", nargs="+", help="run folders in training order (the last one's model is shipped)")
    n.add_argument("--output", required=True)
    n.add_argument("--id", required=True)
    n.add_argument("--version", required=True)
    n.add_argument("--eval", action="append", metavar="NAME=FOLDER", help="evaluation folder (metrics.json)")
    n.add_argument("--card", help="JSON merged into the card (provenance, limits, recipe ...)")
    n.set_defaults(func=cmd_bundle)

    k = sub.add_parser("pack", help="write a config's samples (train and val splits) to one portable file")
    k.add_argument("--config", required=True, help="YAML config whose sources are packed")
    k.add_argument("--output", required=True, help="pack file (.npz)")
    k.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    k.add_argument("--set", action="append", metavar="KEY=VALUE")
    k.set_defaults(func=cmd_pack)

    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(a.func(a))
    except (FileNotFoundError, ValueError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
