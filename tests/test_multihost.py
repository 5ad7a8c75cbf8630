"""Multi-controller training: 2 processes x 2 CPU devices on a data x fsdp mesh end where the
suite's shared chain (1 process, 1 device) does, for mae, align and finetune (every stage the
finetune run trains)."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from cardionets_jax.workdir import Workdir
from tests.conftest import REPO
from tests.conftest import subprocess_env

# The shared chain's method, at its label fraction: a label subset is chosen by row before the
# shuffle, so every host count walks the same stream.
METHOD = "aligned-full-labels0.5-seed0"
FLAGS = ["--config=configs/finetune.py:variant=test", "--config.finetune.inits=('aligned',)",
         "--config.mesh.shape.fsdp=2"]


def _command(workdir, *extra):
  return [sys.executable, "-m", "cardionets_jax.main", f"--workdir={workdir}", *FLAGS, *extra]


def _params(checkpoints):
  """The saved params of the latest step as numpy, whatever devices saved them."""
  path = os.path.join(checkpoints, str(ocp.CheckpointManager(checkpoints).latest_step()), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))["params"]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _assert_same_params(one, two, stage):
  compared = 0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one), jax.tree.leaves(two)):
    name = jax.tree_util.keystr(path)
    if "key_bias" in name:
      # Softmax ignores a bias shared by every key: its gradient is 0 up to rounding, which
      # Adam scales up differently for different reduction orders.
      continue
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=f"{stage} {name}")
    compared += 1
  assert compared > 10, stage


def test_two_processes_match_one_process(trained_workdir, tmp_path):
  # The reference: the shared chain, one process on one device, at the same sizes and steps.
  # The two processes share a compilation cache of their own: a suite cache left by earlier
  # runs (other programs, entries of killed runs) has been seen to hang their first collective.
  port = _free_port()
  procs = [subprocess.Popen(_command(tmp_path / "two", f"--coordinator_address=localhost:{port}",
                                     "--num_processes=2", f"--process_id={i}"),
                            cwd=REPO, env=subprocess_env(2, cache=str(tmp_path / "cache")),
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "over 2 process(es); mesh {'data': 2, 'fsdp': 2, 'tensor': 1}" in outs[0][1]
  # Process 0 logs for the run; process 1 stays quiet.
  assert "Held-out reconstruction loss" in outs[0][1] and "Held-out reconstruction loss" not in outs[1][1]

  one, two = Workdir(trained_workdir), Workdir(tmp_path / "two")
  for stage, run in (("mae", None), ("align", None), ("finetune", METHOD)):
    _assert_same_params(_params(one.checkpoints(stage, run)), _params(two.checkpoints(stage, run)),
                        stage)
  for stage in ("mae", "align", "finetune"):
    assert two.finished(stage), stage
  assert os.path.exists(two.file("mae", "reconstructions.png"))
