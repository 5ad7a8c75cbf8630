"""Times cine generation: MAR sampling with guidance, then the VAE decode, as one compiled program.

  python benchmarks/sample.py --config=configs/mar.py
  python benchmarks/sample.py --config=configs/mar.py:variant=base --batch=4 --repeats=1

Prints one JSON line: compile time, seconds per batch, cines per second, and
the sampler settings (autoregressive steps, diffusion steps, guidance).
Weights are randomly initialised: the cost does not depend on their values.
"""

import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from cardionets_jax.stages import mar as mar_stage
from cardionets_jax.stages import vae as vae_stage

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mar.py", "The mar config.")
_BATCH = flags.DEFINE_integer("batch", 8, "Cines generated per call.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed calls (after the compiling one).")


def main(argv):
  del argv
  config = _CONFIG.value
  model, task = mar_stage.make_task(config)
  rng = jax.random.PRNGKey(0)
  params = nn.unbox(jax.jit(task.init_params)(rng))
  frozen = jax.tree.map(jnp.asarray, nn.unbox(task.init_frozen()))
  vcfg = config.tokenize_config.vae_config
  vae = vae_stage.build_vae(vcfg)
  video = jnp.zeros((1,) + vae_stage.cmr_shape(vcfg), jnp.uint8)
  vae_params = nn.unbox(jax.jit(lambda r: vae.init({"params": r, "sample": r}, video)["params"])(rng))
  generate = mar_stage.make_generate(config, model, vae, tuple(mar_stage.latent_shape(config)))
  embedding = jax.random.normal(rng, (_BATCH.value, mar_stage.embed_dim(config)))

  start = time.perf_counter()
  jax.block_until_ready(generate(params, frozen, vae_params, embedding, rng, conditioned=True))
  first_s = time.perf_counter() - start
  times = []
  for i in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(generate(params, frozen, vae_params, embedding, jax.random.PRNGKey(i + 1),
                                   conditioned=True))
    times.append(time.perf_counter() - start)
  batch_s = float(np.median(times))
  s = config.sample
  print(json.dumps(dict(
      stage="mar", variant=config.variant, device_kind=jax.devices()[0].device_kind,
      devices=jax.device_count(), batch=_BATCH.value, tokens=model.seq_len,
      token_dim=model.token_dim, num_iter=s.num_iter, diffusion_steps=s.diffusion_steps,
      cfg_scale=s.cfg_scale, compile_and_first_call_s=round(first_s, 2), batch_s=batch_s,
      cines_per_s=_BATCH.value / batch_s, s_per_cine=batch_s / _BATCH.value)))


if __name__ == "__main__":
  app.run(main)
