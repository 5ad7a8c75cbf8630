"""Sweeps: grid expansion, commands, a real run, and the gathered CSV."""

import csv
import importlib.util
import json
import os

import pytest

from cardionets_jax.workdir import Workdir
from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("sweep", os.path.join(REPO, "launch", "sweep.py"))
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def test_grid_expands_to_every_combination_and_seed():
  grid = sweep.parse_grid("finetune.layer_decay=0.65,0.75; train.lr=1e-4,3e-4")
  runs = sweep.expand(grid, [0, 1, 2])
  assert len(runs) == 12 and len({name for name, _, _ in runs}) == 12
  name, overrides, seed = runs[0]
  assert name == "layer_decay=0.65_lr=1e-4_seed=0"
  assert overrides == {"finetune.layer_decay": "0.65", "train.lr": "1e-4"} and seed == 0
  cmd = sweep.command("configs/finetune.py", "R/x", overrides, seed, ["train.num_steps=5"])
  assert cmd[-4:] == ["--config.train.num_steps=5", "--config.finetune.layer_decay=0.65",
                      "--config.train.lr=1e-4", "--config.seed=0"]
  with pytest.raises(ValueError, match="KEY=V1,V2"):
    sweep.parse_grid("train.lr")


def test_a_real_sweep_runs_skips_and_gathers(tmp_path, capsys, monkeypatch):
  from tests.conftest import subprocess_env
  for key, value in subprocess_env().items():  # the runs use the real CPU and the suite's cache
    monkeypatch.setenv(key, value)
  fixed = ["train.num_steps=2", "train.log_every=1"]
  args = ["--config=configs/mae.py:variant=test", f"--root={tmp_path}", "--grid=train.lr=1e-3",
          "--seeds=0,1"] + [f"--set={s}" for s in fixed]
  assert sweep.main(args + ["--print"]) == 0
  printed = capsys.readouterr().out.strip().splitlines()
  assert len(printed) == 2 and "--config.seed=1" in printed[1]

  # Seed 1 finished earlier (its FINISHED marker is there): the sweep runs seed 0 only, skips
  # seed 1, and gathers both.
  (tmp_path / "lr=1e-3_seed=1" / "mae").mkdir(parents=True)
  (tmp_path / "lr=1e-3_seed=1" / "mae" / "results.json").write_text(
      '{"heldout_reconstruction_loss": {"final": 0.5}, "variant": "tiny"}')
  Workdir(tmp_path / "lr=1e-3_seed=1").mark_finished("mae", {"stage": "mae"})
  assert sweep.main(args) == 0
  out = capsys.readouterr().out
  assert "[1/2] lr=1e-3_seed=0\n" in out and "lr=1e-3_seed=1: finished, skipped" in out
  with open(tmp_path / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["run"] for r in rows] == ["lr=1e-3_seed=0", "lr=1e-3_seed=1"]
  assert all(r["status"] == "finished" and r["train.lr"] == "1e-3" for r in rows)
  real = json.loads((tmp_path / "lr=1e-3_seed=0" / "mae" / "results.json").read_text())
  assert float(rows[0]["heldout_reconstruction_loss.final"]) == real["heldout_reconstruction_loss"]["final"]
  assert rows[0]["step"] == "2" and rows[1]["heldout_reconstruction_loss.final"] == "0.5"
