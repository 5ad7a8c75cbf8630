"""Tokenize: cache every subject's VAE latent and aligned ECG embedding for the generator.

  python -m cardionets_jax.main --config=configs/tokenize.py --workdir=DIR

Runs the vae and align stages first where they have not finished in DIR.
"""

import ml_collections

from configs import align as align_configs
from configs import common
from configs import vae as vae_configs


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="tiny")
  config = common.base_config("tokenize", arg.variant)
  config.vae_config = vae_configs.get_config(f"variant={arg.variant}")
  config.align_config = align_configs.get_config(f"variant={arg.variant}")
  config.data = config.vae_config.data.copy_and_resolve_references()
  config.init = ml_collections.ConfigDict(dict(vae_checkpoint="", align_checkpoint=""))
  return config
