"""Test setup: 8 simulated CPU devices, parsed absl flags, tiny configs."""

import os

# Must precede the first use of jax: every test sees 8 CPU devices and picks
# the ones it needs.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_platforms", "cpu")
flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags

import tensorflow_datasets as tfds  # noqa: E402

tfds.disable_progress_bar()


def pytest_configure(config):
  # wfdb's own use of pandas; nothing of ours.
  config.addinivalue_line("filterwarnings", "ignore:The inplace keyword")
  config.addinivalue_line("filterwarnings", "ignore::FutureWarning:wfdb")

from configs import mae as mae_config  # noqa: E402


def tiny_mae_config(**train):
  """A mae config small enough for a step in milliseconds."""
  config = mae_config.get_config("variant=tiny")
  config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, decoder_width=32,
                      decoder_depth=1, decoder_heads=2, decoder_mlp_dim=64, patch_size=8)
  config.data.update(cmr_frames=10, cmr_size=16, num_subjects=120)
  config.train.update(batch_size=8, num_steps=4, warmup_steps=1, log_every=2,
                      checkpoint_every=2)
  config.train.update(**train)
  return config


# Overrides that make `python -m cardionets_jax.main --config=configs/mae.py` tiny.
TINY_MAE_FLAGS = [
    "--config.model.width=32", "--config.model.depth=1", "--config.model.num_heads=2",
    "--config.model.mlp_dim=64", "--config.model.decoder_width=32", "--config.model.decoder_depth=1",
    "--config.model.decoder_heads=2", "--config.model.decoder_mlp_dim=64",
    "--config.data.cmr_frames=10", "--config.data.cmr_size=16", "--config.data.num_subjects=120",
    "--config.train.batch_size=8", "--config.train.warmup_steps=1",
]


@pytest.fixture
def tiny_config():
  return tiny_mae_config()
