"""Times cine generation: MAR sampling with guidance, then the VAE decode, as one compiled program.

  python benchmarks/sample.py --config=configs/mar.py
  python benchmarks/sample.py --config=configs/mar.py:variant=base --batch=1 --repeats=1 \
      --samplers=release,clipped

Each sampler preset of configs/mar.py (`--samplers`, default the config's own) is compiled, then
timed in interleaved calls, so presets are compared in one run on the same (random) weights. Per
preset one JSON line: compile time, seconds per cine, and that time split three ways, each part
timed on its own program: the transformer passes (the sampler with two diffusion steps, less
two head steps), the diffusion-head steps (from the difference to the full sampler) and the VAE decode.
Weights are randomly initialised: the cost does not depend on their values.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from cardionets_jax.models import diffusion
from cardionets_jax.models import mar as mar_lib
from cardionets_jax.stages import mar as mar_stage
from cardionets_jax_configs import mar as mar_configs

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mar.py", "The mar config.")
_BATCH = flags.DEFINE_integer("batch", 8, "Cines generated per call.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed calls of each program (after its compiling one).")
_SPLIT = flags.DEFINE_bool("split", True, "Also time the transformer passes, the head steps and the "
                           "decode on their own (three more programs to compile).")
_SAMPLERS = flags.DEFINE_list("samplers", [], "Sampler presets of configs/mar.py to compare "
                              f"({', '.join(mar_configs.SAMPLERS)}); default: the config's.")


def with_sampler(config, name):
  config = config.copy_and_resolve_references()
  config.sample.update(preset=name, **mar_configs.SAMPLERS[name])
  return config


def programs(config, rng):
  """{part: jitted fn(embedding, rng)}: the whole generation, the tokens alone with the config's
  and with two diffusion steps (the fewest a respaced schedule has), and the decode alone."""
  model, generate, parts = mar_stage.random_generator(config, rng)
  s = config.sample

  def tokens(steps):
    sched = diffusion.make_schedule(config.mar.train_timesteps, steps)
    return jax.jit(lambda emb, key: mar_lib.sample_tokens(
        model, parts["params"], emb, key, sched=sched, num_iter=s.num_iter, cfg_scale=s.cfg_scale,
        cfg_schedule=s.cfg_schedule, temperature=s.temperature, clip_x0=s.clip_x0 or None))

  if not _SPLIT.value:
    return model, dict(whole=jax.jit(generate))
  latent = jnp.zeros((_BATCH.value,) + tuple(parts["latent_shape"]))
  return model, dict(whole=jax.jit(generate), tokens=tokens(s.diffusion_steps),
                     tokens_two_steps=tokens(2),
                     decode=jax.jit(lambda emb, key: parts["decode"](latent)))


def timed(fn, embedding, key):
  start = time.perf_counter()
  jax.block_until_ready(fn(embedding, key))
  return time.perf_counter() - start


def main(argv):
  del argv
  base = _CONFIG.value
  names = _SAMPLERS.value or [base.sample.preset]
  rng = jax.random.PRNGKey(0)
  embedding = jax.random.normal(rng, (_BATCH.value, mar_stage.token_shapes(base)[1]))
  built = {n: programs(with_sampler(base, n), rng) for n in names}
  compile_s = {n: timed(p["whole"], embedding, rng) for n, (_, p) in built.items()}
  for _, p in built.values():
    for part, fn in p.items():
      if part != "whole":
        timed(fn, embedding, rng)
  times = {n: {part: [] for part in built[n][1]} for n in names}
  for i in range(_REPEATS.value):      # interleaved: every preset sees the same machine state
    for n, (_, p) in built.items():
      for part, fn in p.items():
        times[n][part].append(timed(fn, embedding, jax.random.PRNGKey(i + 1)))
  for n in names:
    model, _ = built[n]
    med = {part: float(np.median(t)) / _BATCH.value for part, t in times[n].items()}
    s = with_sampler(base, n).sample
    split = {}
    if _SPLIT.value:
      head_step = (med["tokens"] - med["tokens_two_steps"]) / max(s.diffusion_steps - 2, 1)
      split = dict(transformer_passes=med["tokens_two_steps"] - 2 * head_step,
                   diffusion_head_steps=head_step * s.diffusion_steps, vae_decode=med["decode"])
    print(json.dumps(dict(
        stage="mar", variant=base.variant, sampler=n, device_kind=jax.devices()[0].device_kind,
        devices=jax.device_count(), batch=_BATCH.value, tokens=model.seq_len,
        token_dim=model.token_dim, num_iter=s.num_iter, diffusion_steps=s.diffusion_steps,
        cfg_scale=s.cfg_scale, cfg_schedule=s.cfg_schedule, clip_x0=s.clip_x0,
        compile_and_first_call_s=round(compile_s[n], 2), s_per_cine=med["whole"],
        cines_per_s=1.0 / med["whole"], s_per_cine_split=split)))


if __name__ == "__main__":
  app.run(main)
