"""Runs one stage: python -m cardionets_jax.main --config=configs/mae.py --workdir=DIR"""

import logging
import os

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where every stage writes its outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from cardionets_jax import stages
  from cardionets_jax.train import metrics
  metrics.quiet_libraries()
  config = _CONFIG.value
  workdir = os.path.abspath(_WORKDIR.value)
  logging.info("Stage %s, variant %s, workdir %s\n%s", config.stage, config.variant, workdir, config)
  stages.get(config.stage).run(config, workdir)


if __name__ == "__main__":
  app.run(main)
