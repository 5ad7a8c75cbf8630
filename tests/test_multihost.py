"""Multi-controller training: 2 processes x 2 CPU devices end where 1 process x 4 devices does."""

import os
import socket
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp

from tests.conftest import REPO
from tests.conftest import TINY_MAE_FLAGS

STEPS = 4
FLAGS = TINY_MAE_FLAGS + [f"--config.train.num_steps={STEPS}", f"--config.train.checkpoint_every={STEPS}",
                          "--config.train.log_every=2"]


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _command(workdir, *extra):
  return [sys.executable, "-m", "cardionets_jax.main", "--config=configs/mae.py",
          f"--workdir={workdir}", *FLAGS, *extra]


def _params(workdir):
  """The saved params as numpy, whatever devices saved them."""
  import jax
  path = str(workdir / "mae" / "checkpoints" / str(STEPS) / "state")
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return state["params"]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  single = subprocess.run(_command(tmp_path / "one"), cwd=REPO, env=_env(4), capture_output=True,
                          text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]

  port = _free_port()
  procs = [subprocess.Popen(_command(tmp_path / "two", f"--coordinator_address=localhost:{port}",
                                     "--num_processes=2", f"--process_id={i}"),
                            cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "over 2 process(es)" in outs[0][1]
  # Process 0 logs for the run; process 1 stays quiet.
  assert "Held-out reconstruction loss" in outs[0][1] and "Held-out reconstruction loss" not in outs[1][1]

  one, two = _params(tmp_path / "one"), _params(tmp_path / "two")
  import jax
  compared = 0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one), jax.tree.leaves(two)):
    name = jax.tree_util.keystr(path)
    if "key_bias" in name:
      # Softmax ignores a bias shared by every key: its gradient is 0 up to rounding, which
      # Adam scales up differently for different reduction orders.
      continue
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=name)
    compared += 1
  assert compared > 20
  assert os.path.exists(tmp_path / "two" / "mae" / "results.json")
  assert os.path.exists(tmp_path / "two" / "mae" / "reconstructions.png")
