"""Stage 4: the ECG-conditioned MAR generator with a diffusion head.

Trains on the tokenize stage's cached VAE posteriors (a fresh latent is
drawn from each posterior every step), in the latent space `mar.latent_space` names (see
`to_tokens`); evaluated by
`evaluators.generation` (held-out cines generated from their own ECG, a
shuffled one and none, against the true cines).
"""

import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax import stages
from cardionets_jax.data import datasets
from cardionets_jax.data import pipeline
from cardionets_jax.data import records
from cardionets_jax import plots
from cardionets_jax.evaluators import generation
from cardionets_jax.evaluators import splits
from cardionets_jax.models import diffusion
from cardionets_jax.models import layers
from cardionets_jax.models import mar as mar_lib
from cardionets_jax.models import vae3d
from cardionets_jax.stages import common
from cardionets_jax.stages import context as context_lib
from cardionets_jax.stages import vae as vae_stage
from cardionets_jax.train import loop
from cardionets_jax.train import metrics as metrics_lib
from cardionets_jax.train import state as state_lib


def token_shapes(config, tokens_meta=None):
  """(latent shape, ECG embedding size) of the tokens the generator models: those of
  `tokens_meta` (a tokens dataset), else (shape-only use) of configs/vae.py and configs/align.py
  at the config's variant."""
  if tokens_meta is not None:
    return (tuple(tokens_meta.shapes["latent_mean"]),
            int(tokens_meta.shapes["ecg_embedding"][0]))
  vae_config = context_lib.config_for_upstream("vae", config)
  align_config = context_lib.config_for_upstream("align", config)
  return vae_stage.latent_shape(vae_config), align_config.model.embed_dim


def build_model(config, latent_shape):
  m = config.model
  seq_len, token_dim = mar_lib.token_layout(latent_shape, tuple(m.patch))
  if m.head_width < token_dim:
    # Near t = T the noise to predict is almost the head's input: through a narrower hidden
    # layer it cannot be, and sampling diverges.
    logging.warning("model.head_width %d is narrower than a token (%d values): the diffusion head "
                    "cannot pass its input through; widen it", m.head_width, token_dim)
  return mar_lib.MAR(
      seq_len=seq_len, token_dim=token_dim, width=m.width, depth=m.depth, num_heads=m.num_heads,
      mlp_dim=m.mlp_dim, decoder_width=m.decoder_width, decoder_depth=m.decoder_depth,
      decoder_heads=m.decoder_heads, decoder_mlp_dim=m.decoder_mlp_dim,
      buffer_size=m.buffer_size, dropout=m.dropout, head_width=m.head_width,
      head_depth=m.head_depth, cond_activation=m.cond_activation, inner_dropout=m.inner_dropout,
      dtype=jnp.dtype(config.train.compute_dtype), stack=layers.Stack.of(m))


def example_spec(latent_shape, embed_dim):
  return {"latent_mean": (latent_shape, jnp.float32), "latent_logvar": (latent_shape, jnp.float32),
          "ecg_embedding": ((embed_dim,), jnp.float32)}


def train_flops_per_example(config):
  """3x the forward: the encoder at its most known tokens, the head on every token x mul."""
  m, c = config.model, config.mar
  seq_len, token_dim = mar_lib.token_layout(token_shapes(config)[0], tuple(m.patch))
  _, known = mar_lib.max_masked_known(seq_len, c.min_mask_ratio)
  return 3 * mar_lib.mar_flops(
      seq_len, token_dim, width=m.width, depth=m.depth, mlp_dim=m.mlp_dim,
      decoder_width=m.decoder_width, decoder_depth=m.decoder_depth,
      decoder_mlp_dim=m.decoder_mlp_dim, buffer_size=m.buffer_size, head_width=m.head_width,
      head_depth=m.head_depth, known=known, head_rows=seq_len * c.diffusion_mul)


LATENT_SPACES = ("decoder", "channel_stats", "raw")


def to_tokens(latent, frozen, patch, space, latent_norm):
  """Posterior samples (B, T, H, W, C) -> the tokens (B, S, D) the generator models.

  space "decoder" (the release's VAE forward): the latent as the decoder reads it, i.e. with the
  VAE's `latent_norm` applied; "channel_stats": standardised per channel with training-split
  statistics (`frozen`); "raw": the sample as it is (the release's latent caching, whose
  generations are decoded without the layer norm).
  """
  if space == "decoder":
    latent = vae3d.decoder_latent(latent, latent_norm)
  elif space == "channel_stats":
    latent = (latent - frozen["latent_mean"]) / frozen["latent_std"]
  elif space != "raw":
    raise ValueError(f"mar.latent_space must be one of {LATENT_SPACES}, got {space!r}")
  return mar_lib.patchify_latent(latent, patch)


def from_tokens(tokens, frozen, patch, shape, space, latent_norm):
  """Generated tokens -> the latent the VAE decoder is given (the inverse of `to_tokens`)."""
  latent = mar_lib.unpatchify_latent(tokens, patch, shape)
  if space == "channel_stats":
    latent = latent * frozen["latent_std"] + frozen["latent_mean"]
    latent = vae3d.decoder_latent(latent, latent_norm)
  return latent


def tokens_latent_norm(tokens_meta):
  """The latent norm of the VAE a tokens dataset was made with (older tokens: "none")."""
  return ((tokens_meta.provenance or {}).get("vae") or {}).get("latent_norm", "none")


def latent_stats(tokens_dir, limit):
  """Per-channel mean and std of the training latents' posterior means."""
  sums, squares, count = 0.0, 0.0, 0
  for batch, valid in pipeline.eval_batches(tokens_dir, "train", ("latent_mean",), 64, limit):
    x = batch["latent_mean"][:valid].astype(np.float64)
    x = x.reshape(-1, x.shape[-1])
    sums, squares, count = sums + x.sum(0), squares + (x ** 2).sum(0), count + len(x)
  mean = sums / count
  return mean, np.sqrt(np.maximum(squares / count - mean ** 2, 1e-12))


def make_task(config, tokens_dir=None):
  """The mar task on the tokens in `tokens_dir` (their shapes, and the latent statistics); shape-
  only users (benchmarks, AOT compiles, tests) leave it out."""
  tokens_meta = records.DatasetMeta.load(tokens_dir) if tokens_dir else None
  shape, embed_dim = token_shapes(config, tokens_meta)
  model = build_model(config, shape)
  c, patch = config.mar, tuple(config.model.patch)
  sched = diffusion.make_schedule(c.train_timesteps)
  channels = shape[-1]
  latent_norm = (tokens_latent_norm(tokens_meta) if tokens_meta is not None
                 else context_lib.config_for_upstream("vae", config).model.latent_norm)

  def masks(rng, batch_size):
    return mar_lib.training_mask(rng, batch_size, model.seq_len, c.min_mask_ratio,
                                 c.mask_ratio_mean, c.mask_ratio_std, c.mask_ratio_per)

  def init_params(rng):
    tokens = jnp.zeros((1, model.seq_len, model.token_dim))
    emb = jnp.zeros((1, embed_dim))
    mask, idx, valid = masks(rng, 1)
    return model.init({"params": rng, "dropout": rng}, tokens, emb, jnp.ones((1,), bool), mask, idx,
                      valid, sched, rng, method=mar_lib.MAR.loss)["params"]

  def init_frozen():
    return dict(latent_mean=jnp.zeros((channels,)), latent_std=jnp.ones((channels,)))

  def loss_fn(params, frozen, batch, rng, step):
    del step
    sample_rng, mask_rng, drop_rng, diff_rng, dropout_rng = jax.random.split(rng, 5)
    mean, logvar = batch["latent_mean"], batch["latent_logvar"]
    latent = mean + jnp.exp(0.5 * logvar) * jax.random.normal(sample_rng, mean.shape)
    tokens = to_tokens(latent, frozen, patch, c.latent_space, latent_norm)
    b = tokens.shape[0]
    mask, idx, valid = masks(mask_rng, b)
    keep = jax.random.uniform(drop_rng, (b,)) >= c.cond_drop
    loss = model.apply({"params": params}, tokens, batch["ecg_embedding"], keep, mask, idx, valid,
                       sched, diff_rng, c.diffusion_mul, True, method=mar_lib.MAR.loss,
                       rngs={"dropout": dropout_rng})
    return loss, {}

  load_frozen = None if tokens_dir is None else functools.partial(
      _load_latent_stats, tokens_dir=tokens_dir, count=c.latent_stats_examples)
  return model, loop.Task(init_params=init_params, loss_fn=loss_fn,
                          spec=example_spec(shape, embed_dim), init_frozen=init_frozen,
                          load_frozen=load_frozen)


def _load_latent_stats(abstract, mesh, rules, tokens_dir, count):
  """The frozen latent normalisation: per-channel statistics of the training split's latents."""
  del mesh, rules
  mean, std = latent_stats(tokens_dir, count)
  metrics_lib.log("Latent normalisation from %d training subjects: mean %s, std %s", count,
                  np.round(mean, 3), np.round(std, 3))
  values = dict(latent_mean=mean, latent_std=std)
  return jax.tree.map(lambda v, a: jax.device_put(jnp.asarray(v, a.dtype), a.sharding), values,
                      abstract)


def make_generate(config, model, vae, shape):
  """A jitted `(params, frozen, vae_params, embedding, rng, conditioned) -> cines (B, F, H, W)`
  in [-1, 1]: sampling, de-normalisation and the VAE decode in one program."""
  s = config.sample
  sched = diffusion.make_schedule(config.mar.train_timesteps, s.diffusion_steps)
  patch = tuple(config.model.patch)

  def generate(params, frozen, vae_params, embedding, rng, conditioned):
    tokens = mar_lib.sample_tokens(model, params, embedding, rng, sched=sched, num_iter=s.num_iter,
                                   cfg_scale=s.cfg_scale, cfg_schedule=s.cfg_schedule,
                                   temperature=s.temperature, clip_x0=s.clip_x0 or None,
                                   conditioned=conditioned)
    latent = from_tokens(tokens, frozen, patch, shape, config.mar.latent_space, vae.latent_norm)
    return jnp.clip(vae.apply({"params": vae_params}, latent, method=vae.decode), -1.0, 1.0)

  return jax.jit(generate, static_argnames=("conditioned",))


def random_generator(config, rng):
  """(model, generate(embedding, rng) -> cines, parts) with random weights at the config's sizes
  (and configs/vae.py's VAE at its variant): what generation costs, for benchmarks. `parts`:
  the MAR params, the latent shape and `decode(latent) -> cines`, to time the pieces alone."""
  import flax.linen as nn
  model, task = make_task(config)
  params = nn.unbox(jax.jit(task.init_params)(rng))
  frozen = jax.tree.map(jnp.asarray, nn.unbox(task.init_frozen()))
  vae_config = context_lib.config_for_upstream("vae", config)
  vae = vae_stage.build_vae(vae_config)
  vae_params = nn.unbox(jax.jit(lambda r: vae_stage.init_vae(vae, vae_config, r))(rng))
  shape = tuple(vae_stage.latent_shape(vae_config))
  generate = make_generate(config, model, vae, shape)
  parts = dict(params=params, latent_shape=shape,
               decode=lambda latent: vae.apply({"params": vae_params}, latent, method=vae.decode))
  return model, lambda embedding, key: generate(params, frozen, vae_params, embedding, key,
                                                conditioned=True), parts


def tokens_vae(tokens_dir):
  """The VAE checkpoint (step folder) a tokens dataset was made with: the generator decodes with
  exactly that VAE."""
  made_by = records.DatasetMeta.load(tokens_dir).provenance or {}
  if "vae" not in made_by:
    raise ValueError(f"{tokens_dir} does not record its VAE: re-run tokenize")
  return f"{made_by['vae']['checkpoint']}/{made_by['vae']['step']}"


def export_generator(state, workdir):
  """The sampling weights (EMA params) and the latent normalisation, for screening."""
  save_generator(workdir, state_lib.ema_params(state), state.frozen)


def save_generator(workdir, params, frozen):
  """`artifacts/generator` of the mar stage: what screening generates with."""
  import orbax.checkpoint as ocp
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(workdir.artifact("mar", "generator"), dict(params=params, frozen=frozen),
                    force=True)
  checkpointer.wait_until_finished()


def run(config, context):
  start = time.time()
  workdir = context.workdir
  cohort_dir, cohort_meta = datasets.resolve(config, workdir)
  tokens = context.upstream("tokenize", config)
  mae_up = context.upstream("mae", config)
  model, task = make_task(config, tokens.path)
  trainer = loop.Trainer(config, workdir, "mar", tokens.path, task, mesh=context.mesh)
  latent_shape = tuple(records.DatasetMeta.load(tokens.path).shapes["latent_mean"])
  evaluator = generation.GenerationEvaluator(
      config, lambda vae: make_generate(config, model, vae, latent_shape), trainer, tokens.path,
      tokens_vae(tokens.path), mae_up.reference, cohort_dir, cohort_meta)
  val_split = splits.choose(cohort_meta, "val", config.data)

  def on_eval(state, step, writer):
    point = evaluator.curve_point(state, val_split, config.eval.curve_subjects)
    writer.write(step, point, split="val")
    metrics_lib.log("step %d, %s: SSIM own ECG - shuffled %.4f; area EF proxy vs LVEF r %.3f", step,
                    val_split, point["ssim_own_minus_shuffled"], point["area_ef_vs_lvef_own_ecg"])

  state = trainer.fit(on_eval)
  export_generator(state, workdir)
  if config.train.eval_every and jax.process_index() == 0:
    write_curve(workdir, val_split)
  result, generated, truth, ids = evaluator.evaluate(state)
  step = int(state.step)
  results = dict(stage="mar", variant=config.variant, step=step,
                 **{f"heldout_{evaluator.split}": result}, sample=config.sample.to_dict(),
                 sources=evaluator.sources,
                 upstream=dict(tokenize=tokens.describe(config.data),
                               mae=mae_up.describe(config.data)),
                 checkpoint=f"{trainer.checkpoint_dir}/{step}", wall_time_s=time.time() - start)
  if jax.process_index() == 0:
    generation.write_samples(workdir.samples("mar"), ids, generated, truth)
  common.write_results(workdir, "mar", results)
  for name in generation.CONDITIONS + generation.BASELINES + generation.RESCANS + (
      "vae_reconstruction",):
    if name not in result:
      continue
    r = result[name]
    metrics_lib.log("%-18s SSIM %.4f (%.4f-%.4f)  PSNR %.2f dB (%.2f-%.2f)", name, r["ssim"]["value"],
                    r["ssim"]["low"], r["ssim"]["high"], r["psnr"]["value"], r["psnr"]["low"],
                    r["psnr"]["high"])
  for source, r in result["area_readout"].items():
    metrics_lib.log("area read-out, %-18s Pearson r: EF proxy vs LVEF %.3f, ED area vs LVEDV %.3f; "
                    "EF proxy %.2f +- %.2f", source, r["ef_vs_lvef"]["value"],
                    r["ed_area_vs_lvedv"]["value"], r["ef_mean"], r["ef_sd"])
  for a, b in generation.PAIRED:
    if f"{a}_minus_{b}" not in result:
      continue
    d = result[f"{a}_minus_{b}"]["ssim"]
    metrics_lib.log("SSIM %s - %s: %.4f (95%% CI %.4f-%.4f)", a, b, d["value"], d["low"], d["high"])
  return results


def write_curve(workdir, split):
  """mar/curve.png: the validation figures of `on_eval` against training steps."""
  path = workdir.file("mar", "metrics.jsonl")
  if not os.path.exists(path):   # nothing trained here (converted weights, evaluated as they are)
    return
  rows = [m for m in metrics_lib.read_metrics(path)
          if m.get("split") == "val" and "ssim_own_minus_shuffled" in m]
  if not rows:
    return
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4))
  steps = [m["step"] for m in rows]
  for ax, key, label in ((axes[0], "ssim_own_minus_shuffled", "SSIM, own ECG - shuffled ECG"),
                         (axes[1], "area_ef_vs_lvef_own_ecg", "area EF proxy vs LVEF, Pearson r")):
    ax.plot(steps, [m[key] for m in rows], "o-")
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set(xlabel="training step", title=label)
  fig.suptitle(f"Generation that carries the patient ({split} subjects, own-ECG cines)")
  fig.tight_layout()
  fig.savefig(workdir.file("mar", "curve.png"), dpi=110)
  plt.close(fig)


STAGE = stages.Stage(name="mar", upstream=lambda config: ("tokenize", "mae"),
                     hands_on="params (EMA in the optimizer state); artifacts/generator", run=run,
                     task=lambda config: make_task(config)[-1],
                     train_flops=train_flops_per_example)
