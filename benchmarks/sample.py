"""Times cine generation: MAR sampling with guidance, then the VAE decode, as one compiled program.

  python benchmarks/sample.py --config=configs/mar.py
  python benchmarks/sample.py --config=configs/mar.py:variant=base --batch=4 --repeats=1

Prints one JSON line: compile time, seconds per batch, cines per second, and
the sampler settings (autoregressive steps, diffusion steps, guidance).
Weights are randomly initialised: the cost does not depend on their values.
"""

import json
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from cardionets_jax.stages import mar as mar_stage

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mar.py", "The mar config.")
_BATCH = flags.DEFINE_integer("batch", 8, "Cines generated per call.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed calls (after the compiling one).")


def main(argv):
  del argv
  config = _CONFIG.value
  rng = jax.random.PRNGKey(0)
  model, generate = mar_stage.random_generator(config, rng)
  embedding = jax.random.normal(rng, (_BATCH.value, mar_stage.token_shapes(config)[1]))

  start = time.perf_counter()
  jax.block_until_ready(generate(embedding, rng))
  first_s = time.perf_counter() - start
  times = []
  for i in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(generate(embedding, jax.random.PRNGKey(i + 1)))
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
