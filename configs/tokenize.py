"""Tokenize: cache every subject's VAE latent and aligned ECG embedding for the generator.

  python -m cardionets_jax.main --config=configs/tokenize.py --workdir=DIR

`init.vae` and `init.align` name the VAE and the ECG encoder ("" = DIR's, trained first when
missing); the tokens record both (paths and steps), and the generator decodes with that VAE.
"""

import ml_collections

from cardionets_jax_configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="tiny")
  config = common.base_config("tokenize", arg.variant, vae="", align="")
  config.tokenize = ml_collections.ConfigDict(dict(batch_size=16))  # subjects encoded at once
  return config
