"""Data packs (samples for a machine without the data root), loader workers and time budgets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ChestCTMTLTraining.config import load_config
from ChestCTMTLTraining.data import load_sources, read_gt_original
from ChestCTMTLTraining.data import json_default
from ChestCTMTLTraining.pack import PackError, read_pack, write_pack
from ChestCTMTLTraining.train import representation_of, rescale_stages, resolve_root

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_pack(tmp_path_factory, data_dir):
    """The smoke config (every real source, few slices) packed once for this module."""
    cfg = load_config("smoke", {"data_root": str(data_dir)})
    path = write_pack(cfg, tmp_path_factory.mktemp("pack") / "smoke.npz")
    return cfg, path


def test_pack_holds_what_the_sources_give(smoke_pack):
    cfg, path = smoke_pack
    rep = representation_of(cfg)
    for split in ("train", "val"):
        direct = load_sources(cfg["sources"], split, rep, resolve_root(cfg))
        packed = read_pack(path, split, rep, cfg["sources"])
        assert [s.name for s in packed] == [s.name for s in direct]
        for d, p in zip(direct, packed):
            assert p.kind == d.kind and p.ids == d.ids and p.split == split
            np.testing.assert_array_equal(p.classes, d.classes)
            np.testing.assert_array_equal(p.masks, d.masks)
            np.testing.assert_array_equal(p.mask_present, d.mask_present)
            np.testing.assert_array_equal(p.seg_weight, d.seg_weight)
            # 8-bit storage: at most half a grey level off (plus float16 rounding)
            err = np.abs(p.images.astype(np.float32) - np.clip(d.images.astype(np.float32), 0, 1))
            assert err.max() <= 0.5 / 255 + 1e-3
            for mp, md in zip(p.meta, d.meta):
                assert {k: v for k, v in mp.items() if k != "gt_array"} == json.loads(json.dumps(md, default=json_default))
            assert json.loads(json.dumps(d.volumes, default=json_default)) == p.volumes
    # COVID doctor slices are scored at their original size: the original mask travels along
    val = {s.name: s for s in read_pack(path, "val", rep, cfg["sources"])}
    metas = [m for m in val["covid-doctor"].meta if m.get("mask")]
    assert metas
    for m in metas:
        from_file = read_gt_original({k: v for k, v in m.items() if k != "gt_array"})
        np.testing.assert_array_equal(read_gt_original(m), from_file)


def test_pack_is_refused_for_another_config_or_when_broken(smoke_pack, tmp_path):
    cfg, path = smoke_pack
    other = load_config("smoke", {"model": {"input_size": 96}})
    with pytest.raises(PackError, match="re-pack"):
        read_pack(path, "train", representation_of(other), other["sources"])
    with pytest.raises(PackError, match="does not exist"):
        read_pack(tmp_path / "nope.npz", "train", representation_of(cfg), cfg["sources"])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(PackError, match="corrupt"):
        read_pack(bad, "train", representation_of(cfg), cfg["sources"])
    # the source weight is a training choice, not part of the samples: still accepted
    reweighted = [dict(s, weight=7.0) for s in cfg["sources"]]
    assert read_pack(path, "train", representation_of(cfg), reweighted)


def _train(args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([sys.executable, "-m", "ChestCTMTLTraining", "train", "--quiet"] + args, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_loader_workers_change_speed_not_weights(smoke_pack, tmp_path):
    cfg, path = smoke_pack
    runs = {}
    for workers in (0, 2):
        out = tmp_path / ("w%d" % workers)
        r = _train(["--config", "smoke", "--pack", str(path), "--output", str(out),
                    "--set", "train.steps=3", "--set", "train.workers=%d" % workers])
        assert r.returncode == 0, r.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["loader_workers"] == workers and summary["steps"] == 3
        runs[workers] = json.loads((out / "model" / "model.json").read_text())["sha256"]
    assert runs[0] == runs[2]

    # evaluation reads the same pack (no data root needed), on the samples the pack holds
    from ChestCTMTLTraining.evaluate import evaluate_model

    m = evaluate_model(tmp_path / "w2" / "model", "smoke", tmp_path / "eval", max_per_source=5,
                       overrides={"data_pack": str(path)}, probe_format=False)
    assert m["data_pack"] == str(path)
    val = read_pack(path, "val", representation_of(cfg), cfg["sources"])
    assert m["samples"] == {s.name: min(len(s), 5) for s in val}
    assert "covid_dice" in m["headline"] and (tmp_path / "eval" / "metrics.json").is_file()

    # two runs bundled as one model folder: continuous log, the chain on the card, same weights
    from ChestCTMTLLib import modelio
    from ChestCTMTLTraining.bundle import bundle

    folder = bundle([tmp_path / "w0", tmp_path / "w2"], tmp_path / "bundled", "test-bundle", "9.9.9",
                    {"validation": tmp_path / "eval"}, {"limits": ["test only"]})
    lm = modelio.load_model(folder)
    assert lm.card["id"] == "test-bundle" and lm.card["sha256"] == runs[2]
    assert [r["run"] for r in lm.card["training"]["runs"]] == ["w0", "w2"]
    assert lm.card["training"]["steps_done"] == 6 and lm.card["limits"] == ["test only"]
    assert set(lm.card["metrics"]["validation"]) == set(m["headline"])  # copied from metrics.json
    with open(folder / "training_log.csv") as f:
        steps = [int(line.split(",")[0]) for line in f.readlines()[1:]]
    assert steps == sorted(steps) and steps[-1] == 6
    assert (folder / "training_curves.png").stat().st_size > 1000


def test_time_budget_fits_the_schedule_and_is_recorded(smoke_pack, tmp_path):
    cfg, path = smoke_pack
    over = tmp_path / "budget.yaml"
    over.write_text(yaml.safe_dump({"extends": "smoke.yaml", "train": {
        "stages": [{"name": "a", "steps": 400, "crop_size": 32, "batch_size": 2},
                   {"name": "b", "steps": 200, "batch_size": 2}],
        "time_budget_s": 6, "budget_probe_steps": 4, "warmup_steps": 1}}))
    r = _train(["--config", str(over), "--pack", str(path), "--output", str(tmp_path / "run")])
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["time_budget_s"] == 6 and s["schedule_scale_factors"]
    assert s["schedule_scale_factors"][0] < 1  # 600 steps do not fit in 6 s on a CPU
    assert s["steps"] == sum(s["stage_steps"]) or s["stopped_by_time_budget"]
    card = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert [st["steps"] for st in card["training"]["stages"]] == s["stage_steps"]
    assert card["training"]["time_budget_s"] == 6


def test_rescale_stages_known_answer():
    stages = [{"steps": 1000, "batch_size": 64, "crop_size": 128}, {"steps": 500, "batch_size": 32, "crop_size": None}]
    # 100 steps done at 0.1 s/step; the full-size stage costs 2x per step (32*256^2 vs 64*128^2):
    # rest = 900 + 500*2 = 1900 step-equivalents = 190 s; 95 s left -> factor 0.5
    f = rescale_stages(stages, 0, 100, 0.1, 95.0, 256)
    assert f == pytest.approx(0.5)
    assert [s["steps"] for s in stages] == [100 + 450, 250]
