"""End-to-end training: the packaged smoke config on every real source, export + load, resume,
a 2-process torchrun run, evaluation and 2D prediction with the resulting model."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ChestCTMTLLib import modelio

REPO = Path(__file__).resolve().parents[1]


def _tiny_config(tmp: Path, data_dir: Path, **train) -> Path:
    """A seconds-long config: 64-px input, two small real sources."""
    cfg = {
        "seed": 3, "data_root": str(data_dir), "model": {"backbone": "fast", "input_size": 64},
        "sources": [
            {"name": "covid", "type": "covid_semiseg", "kind": "doctor",
             "path": "covid_semiseg/TrainingSet/LungInfection-Train/Doctor-label", "max_samples": 8,
             "holdout": {"mode": "last_fraction", "fraction": 0.1}},
            {"name": "iq", "type": "image_folder", "path": "iq_othnccd",
             "mapping": {"normal": "non-covid", "malignant": "cancer", "benign": None}, "max_samples": 12},
        ],
        "train": {"regime": "joint", "stages": [], "steps": 4, "batch_size": 2, "lr": 0.001,
                  "warmup_steps": 1, "log_every": 1, "checkpoint_every": 1, "threads": 1, **train},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(args, env=None, timeout=600):
    e = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", **(env or {}))
    return subprocess.run([sys.executable, "-m", "ChestCTMTLTraining"] + args, cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir):
    """The packaged smoke.yaml: every real source, a few steps, exported model."""
    out = tmp_path_factory.mktemp("smoke")
    r = _run(["train", "--config", "smoke", "--output", str(out), "--quiet"],
             env={"CHESTCTMTL_DATA": str(data_dir)})
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_smoke_run_reads_every_source_and_exports_a_loadable_model(smoke_run):
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert set(summary["train_samples"]) == {"lidc-0001", "covid-doctor", "covid-multiclass", "covid-pseudo",
                                             "iq-othnccd", "msd-lung"}  # lidc-0002 is the held-out scan
    assert all(n > 0 for n in summary["train_samples"].values())
    lm = modelio.load_model(smoke_run / "model")
    assert lm.card["id"] == "smoke-test-model" and lm.config.input_size == 64
    assert lm.card["training"]["steps_done"] == 6
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        out = lm.model(x)
    assert torch.isfinite(out["class_logits"]).all()
    with open(smoke_run / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert (smoke_run / "curves.png").stat().st_size > 1000
    assert (smoke_run / "checkpoints" / "last.pt").is_file()


def test_resume_continues_where_it_stopped(tmp_path, data_dir):
    cfg = _tiny_config(tmp_path, data_dir)
    a = _run(["train", "--config", str(cfg), "--output", str(tmp_path / "a"), "--quiet", "--set", "train.stop_after=2"])
    assert a.returncode == 0, a.stderr[-2000:]
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["stopped_early"] is True
    assert not (tmp_path / "a" / "model").exists()  # a paused run exports nothing
    b = _run(["train", "--config", str(cfg), "--output", str(tmp_path / "a"), "--quiet", "--resume"])
    assert b.returncode == 0, b.stderr[-2000:]
    assert "resumed from" in b.stdout
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["resumed_from"] == 2 and summary["steps"] == 4
    with open(tmp_path / "a" / "train_log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
    # the same 4 steps in one go give the same weights (batches depend only on seed and step)
    c = _run(["train", "--config", str(cfg), "--output", str(tmp_path / "c"), "--quiet"])
    assert c.returncode == 0, c.stderr[-2000:]
    wa = modelio.load_model(tmp_path / "a" / "model").model.state_dict()
    wc = modelio.load_model(tmp_path / "c" / "model").model.state_dict()
    for k in wa:
        assert torch.allclose(wa[k].float(), wc[k].float(), atol=1e-5), k


def _torchrun(cfg: Path, out: Path, timeout: int = 600):
    """``train`` as 2 CPU processes (gloo) under torchrun."""
    e = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "ChestCTMTLTraining", "train", "--config", str(cfg), "--output", str(out), "--quiet"],
                          cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout)


def test_torchrun_time_budget_and_workers_keep_ranks_in_step(tmp_path, data_dir):
    """Rank 0's measured speed decides every rank's schedule; a disagreement would hang DDP."""
    cfg = _tiny_config(tmp_path, data_dir, steps=300, time_budget_s=5, budget_probe_steps=4, workers=1)
    out = tmp_path / "ddp-budget"
    r = _torchrun(cfg, out, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "rank0_weights.sha256").read_text() == (out / "rank1_weights.sha256").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["loader_workers"] == 1
    assert len(summary["schedule_scale_factors"]) == 1 and summary["stage_steps"][0] < 300


def test_torchrun_two_cpu_processes_end_with_identical_weights(tmp_path, data_dir):
    cfg = _tiny_config(tmp_path, data_dir, steps=3)
    out = tmp_path / "ddp"
    r = _torchrun(cfg, out)
    assert r.returncode == 0, r.stderr[-3000:]
    h0 = (out / "rank0_weights.sha256").read_text().strip()
    h1 = (out / "rank1_weights.sha256").read_text().strip()
    assert h0 == h1 and len(h0) == 64
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    modelio.load_model(out / "model")
    # and the training really moved the weights away from the initialisation
    from ChestCTMTLLib.model import MultiTaskNet
    from ChestCTMTLTraining.config import load_config
    from ChestCTMTLTraining.train import model_config_of, state_digest

    torch.manual_seed(3)
    init = MultiTaskNet(model_config_of(load_config(cfg)))
    assert state_digest(init) != h0


def test_evaluate_writes_metrics_and_report(smoke_run, tmp_path, data_dir):
    r = _run(["evaluate", "--model", str(smoke_run / "model"), "--data", "smoke", "--output", str(tmp_path / "ev"),
              "--max-per-source", "6"], env={"CHESTCTMTL_DATA": str(data_dir)})
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in ("classification", "cancer_vs_normal", "segmentation", "reconstruction", "detection_slices",
                "detection_froc", "format_sensitivity", "files"):
        assert key in m, key
    assert set(m["segmentation"]) == {"covid-infection", "nodule-mass"}
    assert m["segmentation"]["covid-infection"]["by_source"]["covid-doctor"]["grid"] == "original"
    assert 0.0 <= m["classification"]["accuracy"] <= 1.0
    assert np.isfinite(m["reconstruction"]["psnr"])
    assert m["scans"]["lidc-0002"]["lesions"][0]["diameter_mm"] > 20
    # the held-out scan went through the shipped pipeline (Analyzer.apply), not a second linker
    assert m["scans"]["lidc-0002"]["verdict"] in ("non-covid", "covid", "cancer")
    assert "operating_point" in m["detection_froc"] and "segmentation_blob_froc" not in m
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "## Segmentation" in report and "confusion" in report
    # the model card is rendered from these numbers, not typed
    from ChestCTMTLTraining.modelcard import write_model_card

    md = write_model_card(smoke_run / "model", tmp_path / "ev" / "metrics.json", tmp_path / "CARD.md",
                          "python -m ChestCTMTLTraining evaluate ...").read_text()
    assert "%.3f" % m["headline"]["covid_dice"] in md
    assert "Validation split" in md and "## Limits" in md


def test_predict_writes_masks_at_input_size_and_csv(smoke_run, tmp_path, data_dir):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    jpg = data_dir / "covid_semiseg/TrainingSet/LungInfection-Train/Doctor-label/Imgs/0.jpg"
    png = sorted((data_dir / "iq_othnccd" / "normal").glob("*.png"))[0]
    Image.open(jpg).convert("RGB").save(src / "colour.png")  # colour input is accepted
    (src / "broken.png").write_bytes(b"nope")
    r = _run(["predict", str(jpg), str(png), str(src), "--output", str(tmp_path / "out"),
              "--model", str(smoke_run / "model")])
    assert r.returncode == 1  # one input refused
    assert "broken.png" in r.stderr
    with open(tmp_path / "out" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "p_noncovid", "p_covid", "p_cancer", "predicted"]
    assert len(rows) == 3
    for row in rows:
        p = [float(row[k]) for k in ("p_noncovid", "p_covid", "p_cancer")]
        assert abs(sum(p) - 1) < 1e-4 and row["predicted"] in ("non-covid", "covid", "cancer")
    mask = np.asarray(Image.open(tmp_path / "out" / "0_lesion.png"))
    assert mask.shape == np.asarray(Image.open(jpg)).shape[:2]
    assert set(np.unique(mask).tolist()) <= {0, 255}
    assert (tmp_path / "out" / "colour_lesion.png").is_file()


def test_bad_config_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {regime: sideways}\n")
    r = _run(["train", "--config", str(bad), "--output", str(tmp_path / "o")])
    assert r.returncode == 2 and "regime" in r.stderr
    assert not (tmp_path / "o").exists()


def test_ablation_produces_a_table(tmp_path, data_dir):
    cfg = _tiny_config(tmp_path, data_dir, steps=2)
    r = _run(["ablation", "--config", str(cfg), "--output", str(tmp_path / "ab"), "--steps", "2",
              "--rows", "joint-fast", "cls-only-fast"])
    assert r.returncode == 0, r.stderr[-3000:]
    table = (tmp_path / "ab" / "ablation.md").read_text()
    lines = [l for l in table.splitlines() if l.startswith("| joint-fast") or l.startswith("| cls-only-fast")]
    assert len(lines) == 2
    res = json.loads((tmp_path / "ab" / "ablation.json").read_text())
    assert res["cls-only-fast"]["tasks"] == ["classification"]
    assert "covid_dice" not in res["cls-only-fast"] and "covid_dice" in res["joint-fast"]
    assert res["joint-fast"]["parameters"] > res["cls-only-fast"]["parameters"]


def test_ablation_over_seeds_reports_mean_and_sd(tmp_path, data_dir):
    cfg = _tiny_config(tmp_path, data_dir, steps=2)
    r = _run(["ablation", "--config", str(cfg), "--output", str(tmp_path / "ab"), "--steps", "2",
              "--rows", "cls-only-fast", "--seeds", "1", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "ab" / "cls-only-fast-seed1" / "model").is_dir()
    assert (tmp_path / "ab" / "cls-only-fast-seed2" / "model").is_dir()
    res = json.loads((tmp_path / "ab" / "ablation.json").read_text())["cls-only-fast"]
    assert res["seeds"] == [1, 2]
    accs = [json.loads((tmp_path / "ab" / ("cls-only-fast-seed%d" % s) / "eval" / "metrics.json").read_text())
            ["headline"]["accuracy"] for s in (1, 2)]
    assert res["accuracy"] == pytest.approx(np.mean(accs))
    assert res["sd"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    assert " ± " in (tmp_path / "ab" / "ablation.md").read_text()


def test_combine_seeds_known_answer():
    from ChestCTMTLTraining.ablation import combine_seeds

    runs = [{"seed": s, "covid_dice": d, "accuracy": a, "backbone": "fast"}
            for s, d, a in ((0, 0.70, 0.80), (1, 0.74, float("nan")), (2, 0.72, 0.84))]
    row = combine_seeds(runs)
    assert row["covid_dice"] == pytest.approx(0.72) and row["sd"]["covid_dice"] == pytest.approx(0.02)
    assert row["accuracy"] == pytest.approx(0.82)  # a failed (NaN) run is left out, not averaged in
    assert row["seeds"] == [0, 1, 2] and row["backbone"] == "fast"
    assert combine_seeds(runs[:1]) == runs[0]


def test_chestctmtl_analyze_loads_the_smoke_model(smoke_run, small_ct, tmp_path):
    """What training exports is what the product loads: no conversion step in between."""
    from ChestCTMTLLib.volume_io import write_ct
    from ChestCTMTLMRML import cli

    ct_path = tmp_path / "small.nrrd"
    write_ct(small_ct, ct_path)
    code = cli.main(["analyze", str(ct_path), "--model", str(smoke_run / "model"),
                     "--output", str(tmp_path / "out"), "--no-progress", "--no-preview"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "small" / "report.json").read_text())
    assert report["model"]["id"] == "smoke-test-model"
    assert abs(sum(report["classification"].values()) - 1) < 1e-6
