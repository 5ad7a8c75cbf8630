"""Runs one stage: python -m cardionets_jax.main --config=configs/mae.py --workdir=DIR"""

import logging
import os

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where every stage writes its outputs.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging.Filter):
  """Keeps INFO lines from our code; libraries (Orbax is chatty) speak at WARNING+."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "cardionets_jax" in record.pathname


def main(argv):
  del argv
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(_QuietLibraries())
  from cardionets_jax import stages
  config = _CONFIG.value
  workdir = os.path.abspath(_WORKDIR.value)
  logging.info("Stage %s, variant %s, workdir %s\n%s", config.stage, config.variant, workdir, config)
  stages.get(config.stage).run(config, workdir)


if __name__ == "__main__":
  app.run(main)
