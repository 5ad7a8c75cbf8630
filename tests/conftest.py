"""Test setup: 8 simulated CPU devices, parsed absl flags, tiny configs."""

import os

# The suite's programs are tiny: compiling them dominates, so LLVM's optimisation passes are
# skipped (about a third less CPU), in this process and in the children the tests start.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"

# Must precede the first use of jax: every test sees 8 CPU devices and picks
# the ones it needs.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {TEST_XLA_FLAGS}"
                           " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_platforms", "cpu")
# One persistent compilation cache for the suite, this process and every child it starts: the
# stages' programs at test sizes recur across tests (and across xdist workers), so each compiles once.
COMPILATION_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 ".pytest_cache", "jax-compilation-cache")
jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags

import tensorflow_datasets as tfds  # noqa: E402

tfds.disable_progress_bar()


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
  """Under xdist, the tests that read the shared trained workdir run on one worker, so the chain
  that makes it runs once (`--dist loadgroup`)."""
  for item in items:
    if {"tokenized_workdir", "trained_workdir"} & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.xdist_group("trained_workdir"))


def pytest_configure(config):
  # wfdb's own use of pandas; nothing of ours.
  config.addinivalue_line("filterwarnings", "ignore:The inplace keyword")
  config.addinivalue_line("filterwarnings", "ignore::FutureWarning:wfdb")

import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from cardionets_jax import orchestrate  # noqa: E402
from cardionets_jax.stages import context as context_lib  # noqa: E402
from cardionets_jax.train import mesh as mesh_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stage_test_config(stage, **train):
  """`configs/<stage>.py:variant=test` (the suite's sizes), with train overrides."""
  config = context_lib.stage_config(stage, "test")
  config.train.update(**train)
  return config


def optimized(fn, *args):
  """`fn` compiled for `args` with XLA's optimisation passes back on: for the few tests whose
  time goes to running a program (thousands of steps), not to compiling it."""
  return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 3})


def one_device_mesh(config):
  return mesh_lib.make_mesh(config.mesh, jax.devices()[:1])


def one_step(config, task, devices, batch):
  """One train step of `task` through the trainer's program builder on `devices`.
  Returns (state before, state after, metrics on the host)."""
  from cardionets_jax.train import program as program_lib
  program = program_lib.build(config, task, mesh_lib.make_mesh(config.mesh, devices))
  state = program.init_state(config.seed)
  before = jax.device_get(state)
  with mesh_lib.active(program.mesh, program.rules):
    new_state, metrics = program.step(state, mesh_lib.global_batch(batch, program.mesh,
                                                                   program.rules))
  return before, new_state, jax.device_get(metrics)


@pytest.fixture
def tiny_config():
  return stage_test_config("mae")


def run_in_process(config, workdir, log_name=None):
  """The orchestrator in this process on one device (as `main` on a laptop); the log lines of
  the run are kept in `<workdir>/logs/<log_name>.log`."""
  handler = None
  if log_name:
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    handler = logging.FileHandler(os.path.join(workdir, "logs", f"{log_name}.log"))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
  previous = logging.getLogger().level
  logging.getLogger().setLevel(logging.INFO)
  try:
    return orchestrate.run(config, str(workdir), mesh=one_device_mesh(config))
  finally:
    logging.getLogger().setLevel(previous)
    if handler:
      logging.getLogger().removeHandler(handler)
      handler.close()


def subprocess_env(devices=None, cache=COMPILATION_CACHE):
  """The environment of a `python -m cardionets_jax...` child: the real CPU (or `devices`
  simulated ones) and the suite's persistent compilation cache (or `cache`), so children
  compile once."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env["XLA_FLAGS"] = TEST_XLA_FLAGS
  if devices:
    env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
  return env


def run_main(args, timeout=900, devices=None):
  """`python -m cardionets_jax.main ARGS` in a child process; fails with its stderr."""
  result = subprocess.run([sys.executable, "-m", "cardionets_jax.main"] + list(args), cwd=REPO,
                          env=subprocess_env(devices), capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


@pytest.fixture(scope="session")
def tokenized_workdir(tmp_path_factory):
  """A workdir where test-sized mae, align, vae and tokenize have run (shared: read, don't
  modify), all from one tokenize run on a fresh workdir."""
  workdir = tmp_path_factory.mktemp("tokenized")
  run_in_process(stage_test_config("tokenize"), workdir, "tokenize")
  return workdir


@pytest.fixture(scope="session")
def trained_workdir(tokenized_workdir):
  """`tokenized_workdir` after mar and finetune runs: everything screening reads."""
  workdir = tokenized_workdir
  run_in_process(stage_test_config("mar"), workdir, "mar")
  run_in_process(stage_test_config("finetune"), workdir, "finetune")
  return workdir
