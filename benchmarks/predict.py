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
from cardionets_jax.stages import mar as mar_stage
from cardionets_jax.stages import vae as vae_stage
from configs import finetune as finetune_configs
from configs import mar as mar_configs

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
  ft_config = finetune_configs.get_config(f"variant={_VARIANT.value}")
  method = finetune.Method(ft_config, "aligned", 1.0, 0, "", None, meta)  # nothing is read
  variables = nn.unbox(jax.jit(method._init_all)(rng))  # pylint: disable=protected-access
  predict = method.predictor()
  ecg = jax.random.normal(rng, (b, 12, 2500))
  mask = jnp.ones((b, 12), jnp.uint8)
  predict_s = _time(lambda e, m: predict(variables, dict(ecg=e, lead_mask=m)), ecg, mask)

  config = mar_configs.get_config(f"variant={_VARIANT.value}")
  acfg, vcfg = config.tokenize_config.align_config, config.tokenize_config.vae_config
  align_model, _, align_task = align.make_task(acfg)
  align_params = nn.unbox(jax.jit(align_task.init_params)(rng))
  model, task = mar_stage.make_task(config)
  params = nn.unbox(jax.jit(task.init_params)(rng))
  frozen = jax.tree.map(jnp.asarray, nn.unbox(task.init_frozen()))
  vae = vae_stage.build_vae(vcfg)
  video = jnp.zeros((1,) + vae_stage.cmr_shape(vcfg), jnp.uint8)
  vae_params = nn.unbox(jax.jit(lambda r: vae.init({"params": r, "sample": r}, video)["params"])(rng))
  generate = mar_stage.make_generate(config, model, vae, tuple(mar_stage.latent_shape(config)))
  embed = jax.jit(lambda e, m: align.crop_averaged(align_model, align_params, e, m, acfg)[1])
  generate_s = _time(lambda e, m: generate(params, frozen, vae_params, embed(e, m), rng, conditioned=True),
                     ecg, mask)
  print(json.dumps(dict(
      variant=_VARIANT.value, device_kind=jax.devices()[0].device_kind, batch=b,
      predict_s_per_record=predict_s / b, generate_s_per_record=generate_s / b,
      with_generation_s_per_record=(predict_s + generate_s) / b,
      sample=dict(num_iter=config.sample.num_iter, diffusion_steps=config.sample.diffusion_steps))))


if __name__ == "__main__":
  app.run(main)
