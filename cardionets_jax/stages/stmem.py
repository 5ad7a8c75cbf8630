"""Stage 0 (optional): ST-MEM pre-training of the ECG encoder on every ECG of a dataset.

Hands on `params/encoder` (EcgEncoder), the layout `python -m cardionets_jax.convert
--source=stmem` writes from ST-MEM's published weights: align and finetune read either through
`init.stmem`. Reads `ecg` and `lead_mask` only, so ECG-only rows (no cine) are trained on too.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax import losses
from cardionets_jax import stages
from cardionets_jax.evaluators import probe
from cardionets_jax.evaluators import splits
from cardionets_jax.models import ecg as ecg_models
from cardionets_jax.models import layers
from cardionets_jax.models import stmem as stmem_models
from cardionets_jax.stages import align
from cardionets_jax.stages import common
from cardionets_jax.train import loop
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import metrics as metrics_lib

FROZEN = ("pos_embed", "decoder_pos_embed")   # ST-MEM's fixed sin-cos tables


def build_model(config):
  m, dtype = config.model, jnp.dtype(config.train.compute_dtype)
  return stmem_models.StMem(
      encoder=align.build_ecg_encoder(config, dtype), decoder_width=m.decoder_width,
      decoder_depth=m.decoder_depth, decoder_heads=m.decoder_heads,
      decoder_mlp_dim=m.decoder_mlp_dim, mask_ratio=config.stmem.mask_ratio, dtype=dtype)


def init_params(model, config, rng):
  """Random init with ST-MEM's sin-cos position tables in the encoder and the decoder."""
  ecg = jnp.zeros((1, 12, config.model.num_samples), jnp.float32)
  params = model.init({"params": rng, "mask": rng}, ecg)["params"]
  n = model.encoder.num_patches
  params["encoder"]["pos_embed"] = params["encoder"]["pos_embed"].replace_boxed(
      jnp.asarray(stmem_models.sincos_positions(n, model.encoder.width)))
  params["decoder_pos_embed"] = params["decoder_pos_embed"].replace_boxed(
      jnp.asarray(stmem_models.sincos_positions(n, model.decoder_width)))
  return params


def frozen_positions(params):
  """LR factor 0 on the position tables (no update, no weight decay), 1 elsewhere."""
  def scale(path, leaf):
    return jnp.asarray(0.0 if getattr(path[-1], "key", None) in FROZEN else 1.0, leaf.dtype)
  return jax.tree_util.tree_map_with_path(scale, params)


def masked_loss(model, config, params, ecg, lead_mask, rng):
  pred, target, mask = model.apply({"params": params}, ecg, lead_mask, rngs={"mask": rng})
  return losses.mae_loss(pred, target, mask, config.stmem.norm_pix_loss, ddof=1)


def make_task(config):
  model = build_model(config)

  def loss_fn(params, frozen, batch, rng, step):
    del frozen, step
    crop_rng, mask_rng = jax.random.split(rng)
    ecg = align.random_crop(batch["ecg"], crop_rng, config.model.num_samples)
    return masked_loss(model, config, params, ecg, batch["lead_mask"], mask_rng), {}

  spec = {"ecg": align.example_spec(config, 0)["ecg"], "lead_mask": ((12,), jnp.uint8)}
  return model, loop.Task(init_params=lambda rng: init_params(model, config, rng),
                          loss_fn=loss_fn, spec=spec, lr_scales=frozen_positions)


def train_flops_per_example(config):
  """Encoder on the kept patches and the SEPs, decoder on every lead's full sequence; x3."""
  m = config.model
  n = ecg_models.num_patches(m.num_samples, m.patch_size)
  k = stmem_models.num_kept(n, config.stmem.mask_ratio)
  forward = (2 * 12 * n * m.patch_size * m.width
             + layers.transformer_flops(12 * (k + 2), m.width, m.depth, m.mlp_dim)
             + 2 * 12 * (k + 2) * m.width * m.decoder_width
             + 12 * layers.transformer_flops(n + 2, m.decoder_width, m.decoder_depth,
                                             m.decoder_mlp_dim)
             + 2 * 12 * n * m.decoder_width * m.patch_size)
  return 3 * forward


class Evaluator:
  """Held-out masked-patch loss (fixed crops and masks) and ridge probes of the frozen features."""

  def __init__(self, config, model, trainer, data_dir, meta):
    self.config, self.trainer, self.data_dir, self.meta = config, trainer, data_dir, meta
    length, crops = config.model.num_samples, 3
    out = mesh_lib.replicated(trainer.mesh)
    self._loss = jax.jit(lambda p, ecg, mask, r: jax.vmap(
        lambda e, m: masked_loss(model, config, p, e[None], m[None], r))(
            ecg[..., :length], mask), out_shardings=out)
    encode = lambda p, ecg, mask: jnp.mean(jnp.stack([
        model.encoder.apply({"params": p["encoder"]}, c, mask)
        for c in align.eval_crops(ecg, length, crops)]), axis=0)
    self._features = jax.jit(encode, out_shardings=out)

  def _map(self, fn, split, keep=(), limit=None):
    t = self.trainer
    return splits.map_split(fn, self.data_dir, split, ("ecg", "lead_mask"), t.mesh, t.rules,
                            keep=keep, limit=limit)

  def heldout_loss(self, params):
    split = splits.choose(self.meta, "val", self.config.data, need_cmr=False)
    rng = jax.random.PRNGKey(self.config.seed + 1)
    values, _ = self._map(lambda b: self._loss(params, b["ecg"], b["lead_mask"], rng), split,
                          limit=self.config.stmem.eval_examples)
    return float(np.mean(values)), split

  def probe(self, params):
    feats = lambda s, n: self._features_of(params, s, n)
    roles, data = probe.features_by_role(feats, self.meta, self.config.data, need_cmr=False)
    return probe.phenotype_probe(data, roles, self.config.probe.alphas, self.meta.phenotype_names)

  def _features_of(self, params, split, limit):
    feats, kept = self._map(lambda b: self._features(params, b["ecg"], b["lead_mask"]), split,
                            keep=("phenotypes",), limit=limit)
    return feats, kept["phenotypes"]


def run(config, context):
  start = time.time()
  workdir = context.workdir
  data_dir, meta, model, trainer = common.open_stage(config, context, "stmem", make_task)
  evaluator = Evaluator(config, model, trainer, data_dir, meta)
  init_loss, split = evaluator.heldout_loss(trainer.state.params)
  init_probe = evaluator.probe(trainer.state.params)   # the random-init encoder: the baseline

  def on_eval(state, step, writer):
    loss, _ = evaluator.heldout_loss(state.params)
    writer.write(step, {"loss": loss}, split="val")
    metrics_lib.log("step %d: held-out masked-patch loss %.4f", step, loss)

  state = trainer.fit(on_eval)
  final_loss, _ = evaluator.heldout_loss(state.params)
  probed = evaluator.probe(state.params)
  step = int(state.step)
  results = dict(
      stage="stmem", variant=config.variant, step=step,
      heldout_masked_patch_loss=dict(initial=init_loss, final=final_loss, split=split),
      probe_r2=probed["r2"], probe_r2_random_init=init_probe["r2"], probe_alpha=probed["alpha"],
      probe_splits=probed["splits"],
      num_examples={s: v["num_examples"] for s, v in meta.splits.items()},
      data=data_dir, checkpoint=f"{trainer.checkpoint_dir}/{step}",
      wall_time_s=time.time() - start)
  common.write_results(workdir, "stmem", results)
  metrics_lib.log("Held-out masked-patch loss %.4f -> %.4f", init_loss, final_loss)
  for name, r2 in probed["r2"].items():
    metrics_lib.log("probe R2 %-18s %6.3f (random init %6.3f)", name, r2, init_probe["r2"][name])
  return results


STAGE = stages.Stage(name="stmem", upstream=lambda config: (),
                     hands_on="params/encoder (EcgEncoder, ST-MEM's layout)", run=run,
                     task=lambda config: make_task(config)[-1], train_flops=train_flops_per_example)
