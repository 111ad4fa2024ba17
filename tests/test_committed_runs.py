"""The training runs kept in the repository (training/<run>/checkpoint.safetensors) continue on
a fresh checkout: the weights give the probe loss the run logged, and a few more steps carry on
from there."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SHARED

RUNS = sorted(p.parent for p in (ROOT / "training").glob("*/checkpoint.safetensors"))
TRAIN = SHARED / "data" / "train"


def logged(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_committed_run_has_its_log_and_config():
    assert RUNS, "the training runs kept in git (training/<run>/checkpoint.safetensors) are missing"
    for run in RUNS:
        assert (run / "metrics.jsonl").is_file() and (run / "config.json").is_file(), run
        checkpoints = [r for r in logged(run) if r.get("event") == "checkpoint"]
        assert checkpoints and "probe_rd" in checkpoints[-1], run


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_committed_run_continues_from_its_logged_state(run, tmp_path):
    if not TRAIN.is_dir():
        pytest.skip(f"training images not found at {TRAIN} (set LICKD_SHARED)")
    from lickd.train import Trainer, saved_config

    work = tmp_path / run.name  # the repository's copy stays as it is
    shutil.copytree(run, work)
    records = logged(run)
    last = [r for r in records if r.get("event") == "checkpoint"][-1]
    step = last["step"]
    cfg = saved_config(work, (f"data={TRAIN}", "val_data=none", f"steps={step + 3}", "ckpt_every=1000000",
                              "log_every=1"))
    trainer = Trainer(cfg, resume=True, progress=False)
    assert trainer.step == step and trainer.saved_probe == pytest.approx(last["probe_rd"])
    # the weights are the ones that were saved (to float rounding of another CPU)
    assert trainer.probe() == pytest.approx(trainer.saved_probe, rel=1e-3)
    losses = [float(trainer.train_step()["loss"]) for _ in range(3)]
    recent = [r["loss"] for r in records if "loss" in r and step - 5000 < r["step"] <= step]
    # one step's loss swings with its crops, and a variable-rate run's ~10x with its qualities (three
    # steps of q1 crops against the ten losses logged over 1,000 steps, mostly q8 ones, failed a
    # bound on the means): within the range the run logged over its last 5,000 steps, not a
    # restart from scratch (hundreds)
    assert np.isfinite(losses).all()
    assert 0.5 * min(recent) < np.mean(losses) < 2 * max(recent), (losses, recent)
    # and the three steps did not throw the model off: the probe moves by little
    assert trainer.probe() == pytest.approx(trainer.saved_probe, rel=0.05)
