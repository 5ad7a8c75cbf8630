"""Times screening's compute per record: phenotypes and risks, and with the synthetic cine.

  python benchmarks/predict.py                      # tiny
  python benchmarks/predict.py --variant=base --batch=4 --repeats=1

The models of `predict.py` at a variant's sizes, randomly initialised (the
cost does not depend on the weights): the fine-tuned ECG encoder with its
heads over 3 crops, and generation (the aligned embedding, guided MAR
sampling, the VAE decode). Prints one JSON line with seconds per record for
each; reading and preprocessing the files comes on top (milliseconds).
"""

import json
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from cardionets_jax.data import synthetic
from cardionets_jax.stages import align
from cardionets_jax.stages import finetune
from cardionets_jax.stages import context as context_lib
from cardionets_jax.stages import mar as mar_stage

_VARIANT = flags.DEFINE_string("variant", "tiny", "tiny or base.")
_BATCH = flags.DEFINE_integer("batch", 16, "Records per compiled batch.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed batches (after the compiling one).")


def _time(fn, *args):
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  b, rng = _BATCH.value, jax.random.PRNGKey(0)
  meta = types.SimpleNamespace(
      phenotype_names=[n for n, _ in synthetic.PHENOTYPES], label_names=list(synthetic.LABELS),
      phenotype_mean=[0.0] * len(synthetic.PHENOTYPES), phenotype_std=[1.0] * len(synthetic.PHENOTYPES))
  ft_config = context_lib.stage_config("finetune", _VARIANT.value)
  method = finetune.Method(ft_config, "aligned", 1.0, 0, meta)  # no context: nothing is read
  variables = nn.unbox(jax.jit(method._init_all)(rng))  # pylint: disable=protected-access
  predict = method.predictor()
  ecg = jax.random.normal(rng, (b, 12, 2500))
  mask = jnp.ones((b, 12), jnp.uint8)
  predict_s = _time(lambda e, m: predict(variables, dict(ecg=e, lead_mask=m)), ecg, mask)

  config = context_lib.stage_config("mar", _VARIANT.value)
  acfg = method.encoder_config
  align_model, _, align_task = align.make_task(acfg)
  align_params = nn.unbox(jax.jit(align_task.init_params)(rng))
  _, generate, _ = mar_stage.random_generator(config, rng)
  embed = jax.jit(lambda e, m: align.crop_averaged(align_model, align_params, e, m, acfg)[1])
  generate_s = _time(lambda e, m: generate(embed(e, m), rng), ecg, mask)
  print(json.dumps(dict(
      variant=_VARIANT.value, device_kind=jax.devices()[0].device_kind, batch=b,
      predict_s_per_record=predict_s / b, generate_s_per_record=generate_s / b,
      with_generation_s_per_record=(predict_s + generate_s) / b,
      sample=dict(num_iter=config.sample.num_iter, diffusion_steps=config.sample.diffusion_steps))))


if __name__ == "__main__":
  app.run(main)
