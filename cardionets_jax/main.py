"""Runs a stage, and the upstream stages it needs: python -m cardionets_jax.main --config=configs/mae.py --workdir=DIR"""

import logging
import os

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where every stage writes its outputs.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-process run with jax.distributed.initialize(), the cluster "
    "detected from the environment (Cloud TPU pods, SLURM, Open MPI).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs the environment "
    "does not describe (e.g. several processes on one machine); with --num_processes, --process_id.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed():
  """Starts JAX's multi-controller runtime when asked to (before any device is touched)."""
  if _COORDINATOR.value:
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices across processes
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    import jax
    jax.distributed.initialize()


def main(argv):
  del argv
  initialize_distributed()
  from cardionets_jax import orchestrate
  from cardionets_jax.train import metrics
  metrics.quiet_libraries()
  config = _CONFIG.value
  workdir = os.path.abspath(_WORKDIR.value)
  import jax
  if jax.process_index() == 0:
    logging.info("Stage %s, variant %s, workdir %s\n%s", config.stage, config.variant, workdir, config)
  else:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # process 0 speaks for the run
  orchestrate.run(config, workdir)


if __name__ == "__main__":
  app.run(main)
