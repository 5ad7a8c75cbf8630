"""A run killed with SIGKILL resumes exactly: same params as an uninterrupted run."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from tests.conftest import run_in_process
from tests.conftest import stage_test_config
from tests.conftest import subprocess_env

# Long enough that the kill lands mid-run (checkpoints every 20 steps; the test kills at the first).
STEPS = 60


def command(workdir):
  return [sys.executable, "-m", "cardionets_jax.main", "--config=configs/mae.py:variant=test",
          f"--workdir={workdir}", f"--config.train.num_steps={STEPS}",
          "--config.train.checkpoint_every=20", "--config.train.log_every=20"]


def env():
  return subprocess_env()  # one CPU device, as a user's laptop


def checkpoints(workdir):
  directory = os.path.join(workdir, "mae", "checkpoints")
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []


def final_params(workdir):
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "mae", "checkpoints", str(STEPS), "state"))
  return state["params"]


def test_killed_run_resumes_bitwise(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(command(killed), cwd=root, env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not checkpoints(killed) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = checkpoints(killed)
  assert saved and saved[-1] < STEPS, f"the run was not killed mid-way (checkpoints {saved})"

  resumed = subprocess.run(command(killed), cwd=root, env=env(), capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  match = re.search(r"Resumed from \S+/checkpoints/(\d+)", resumed.stderr)
  assert match, resumed.stderr[-3000:]
  assert int(match.group(1)) == saved[-1]

  # The uninterrupted run in this process, on one device: a third child would only add its
  # start-up, and bitwise equality across processes is the stronger claim.
  straight = str(tmp_path / "straight")
  config = stage_test_config("mae", num_steps=STEPS, checkpoint_every=20, log_every=20)
  run_in_process(config, straight)
  a, b = final_params(killed), final_params(straight)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
