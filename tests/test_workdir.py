"""The workdir as the stage graph leaves it: reruns that change nothing, damaged checkpoints,
missing splits, the early-stopping state inside the checkpoint manager."""

import glob
import hashlib
import json
import os

import jax
import pytest

from cardionets_jax.stages import NAMES
from cardionets_jax.train.checkpoint import read_item
from cardionets_jax.train.checkpoint import reader
from cardionets_jax.workdir import Workdir
from tests.conftest import run_in_process
from tests.conftest import stage_test_config


def snapshot(root):
  """{relative path: content hash} of every file but the logs."""
  out = {}
  for path in glob.glob(os.path.join(root, "**", "*"), recursive=True):
    rel = os.path.relpath(path, root)
    if os.path.isfile(path) and not rel.startswith("logs"):
      with open(path, "rb") as f:
        out[rel] = hashlib.sha256(f.read()).hexdigest()
  return out


def test_rerun_of_every_finished_stage_trains_nothing_and_rewrites_nothing(trained_workdir):
  results = json.loads((trained_workdir / "finetune" / "results.json").read_text())
  assert any(m["stopped_early"] for m in results["methods"].values())  # an early-stopped method
  before = snapshot(trained_workdir)
  for stage in [s for s in NAMES if (trained_workdir / s).exists()]:  # stmem: not asked for
    run_in_process(stage_test_config(stage), trained_workdir, f"rerun-{stage}")
    log = (trained_workdir / "logs" / f"rerun-{stage}.log").read_text()
    assert f"{stage} already finished in" in log and "step 1/" not in log, stage
  assert snapshot(trained_workdir) == before


def test_early_stopped_method_resumes_to_nothing_from_its_checkpoint(trained_workdir, tmp_path):
  # Without the FINISHED marker the orchestrator runs finetune again: every method resumes from
  # its checkpoints, whose progress says it stopped (or ended), and trains zero steps.
  import shutil
  workdir = tmp_path / "copy"
  shutil.copytree(trained_workdir, workdir, symlinks=True)
  os.remove(workdir / "finetune" / "FINISHED")
  metrics = {p: open(p).read() for p in glob.glob(str(workdir / "finetune" / "*" / "metrics.jsonl"))}
  steps = {p: sorted(os.listdir(p)) for p in glob.glob(str(workdir / "finetune" / "*" / "checkpoints"))}
  run_in_process(stage_test_config("finetune"), workdir, "resume")
  log = (workdir / "logs" / "resume.log").read_text()
  assert "early-stopped" in log and "step 1/" not in log
  assert {p: open(p).read() for p in metrics} == metrics
  assert {p: sorted(os.listdir(p)) for p in steps} == steps


def flip_bytes_unnoticed(step_dir, count=64, tries=64):
  """Flips `count` bytes of the step's largest array file at the first offset the storage layer
  does not notice (it restores, with other values): the damage only fingerprints can catch.
  Offsets it does notice (compressed-chunk or index bytes) are put back as they were."""
  import numpy as np
  import orbax.checkpoint as ocp
  state_dir = os.path.join(step_dir, "state")
  values = lambda: [np.asarray(x) for x in jax.tree.leaves(ocp.StandardCheckpointer().restore(state_dir))]
  original = values()
  path = max(glob.glob(os.path.join(state_dir, "**", "d", "*"), recursive=True), key=os.path.getsize)
  size = os.path.getsize(path)
  for k in range(tries):
    offset = int(size * (0.05 + 0.9 * k / tries))
    with open(path, "r+b") as f:
      f.seek(offset)
      kept = f.read(count)
      f.seek(offset)
      f.write(bytes(b ^ 0xFF for b in kept))
    try:
      if any(not np.array_equal(a, b) for a, b in zip(values(), original)):
        return path, offset
    except Exception:  # noticed by the storage layer: not the case under test
      pass
    with open(path, "r+b") as f:
      f.seek(offset)
      f.write(kept)
  raise AssertionError(f"no offset of {path} changes values unnoticed")


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
  workdir = Workdir(tmp_path)
  run_in_process(stage_test_config("mae"), tmp_path)              # checkpoints 2 and 4
  # An array file of step 4 loses its second half.
  files = sorted(glob.glob(os.path.join(workdir.checkpoints("mae"), "4", "state", "**", "d", "*"),
                           recursive=True), key=os.path.getsize)
  with open(files[-1], "r+b") as f:
    f.truncate(os.path.getsize(files[-1]) // 2)
  run_in_process(stage_test_config("mae", num_steps=6), tmp_path, "truncated")
  log = (tmp_path / "logs" / "truncated.log").read_text()
  assert (f"Checkpoint {workdir.checkpoints('mae')}/4 cannot be restored" in log
          and f"resuming from {workdir.checkpoints('mae')}/2" in log)
  assert f"Resumed from {workdir.checkpoints('mae')}/2" in log
  assert "with a config that differs" not in log   # a longer run is what resuming is for
  assert os.path.isdir(os.path.join(workdir.quarantine("mae"), "4"))
  assert sorted(os.listdir(workdir.checkpoints("mae"))) == ["4", "6"]
  # A step whose commit marker is gone is not trusted either.
  # (And a resume with a changed learning rate says so.)
  os.remove(os.path.join(workdir.checkpoints("mae"), "6", "commit_success.txt"))
  config = stage_test_config("mae", num_steps=8)
  config.train.lr *= 2
  run_in_process(config, tmp_path, "uncommitted")
  log = (tmp_path / "logs" / "uncommitted.log").read_text()
  assert "6 has no commit marker" in log and f"Resumed from {workdir.checkpoints('mae')}/4" in log
  assert "differs from the one it was saved with in 1 field(s): train.lr:" in log
  assert json.loads(open(workdir.results("mae")).read())["step"] == 8
  # 64 flipped bytes in an array file of step 8 that Orbax restores without an error: the saved
  # fingerprints refuse them, the run resumes from step 6 and ends with the state of the
  # uninterrupted run.
  clean = read_item(reader(workdir.checkpoints("mae")), 8, "fingerprints")
  flip_bytes_unnoticed(os.path.join(workdir.checkpoints("mae"), "8"))
  os.remove(os.path.join(workdir.stage_dir("mae"), "FINISHED"))
  run_in_process(config, tmp_path, "flipped")
  log = (tmp_path / "logs" / "flipped.log").read_text()
  assert "differ from the fingerprints saved with them" in log, log[-3000:]
  assert f"Resumed from {workdir.checkpoints('mae')}/6" in log
  assert read_item(reader(workdir.checkpoints("mae")), 8, "fingerprints") == clean


def test_a_dataset_without_a_test_split_needs_a_named_stand_in(tmp_path):
  config = stage_test_config("finetune")
  config.finetune.inits = ("scratch",)  # reads no upstream stage
  config.data.test_fraction = 0.0
  with pytest.raises(ValueError, match=r"no 'test' split.*data.test_stand_in"):
    run_in_process(config, tmp_path)
  assert not os.path.exists(tmp_path / "finetune" / "scratch-full-labels0.5-seed0")  # nothing trained
  config.data.test_stand_in = "val"
  results = run_in_process(config, tmp_path)
  assert results["methods"]["scratch-full-labels0.5-seed0"]["splits"]["metrics"] == "val"


def test_safe_and_unique_names_cannot_leave_their_folder_or_collide():
  from cardionets_jax.workdir import safe_name, unique_names
  ids = ["x", "x", "x_2", "X", "../../x", "/abs/x", "site/123", "site_123", "L" * 300,
         "L" * 300 + "b", ".hidden", "", "..", "naïve", "lr=1e-3_seed=0"]
  names = unique_names(ids)
  assert len({n.casefold() for n in names}) == len(ids)
  for name in names:
    assert name and "/" not in name and "\\" not in name and not name.startswith(".")
    assert len(name) <= 115 and os.path.basename(name) == name
  assert names[:4] == ["x", "x_2", "x_2_2", "X_3"]
  assert names[-1] == "lr=1e-3_seed=0"                      # ordinary names are kept as they are
  assert safe_name("site/123") != safe_name("site_123") == "site_123"
  assert safe_name("L" * 300) != safe_name("L" * 300 + "b")
  assert safe_name("site/123") == safe_name("site/123")     # stable across runs
