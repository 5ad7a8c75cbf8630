"""Stage 1: masked-autoencoder pre-training of the CMR encoder.

Hands on `params/encoder` (a `CmrEncoder`) through its Orbax checkpoint.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax import losses
from cardionets_jax import plots
from cardionets_jax.data import pipeline
from cardionets_jax.evaluators import probe
from cardionets_jax.evaluators import splits
from cardionets_jax.models import layers
from cardionets_jax.models import vit
from cardionets_jax import stages
from cardionets_jax.stages import common
from cardionets_jax.train import loop
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import metrics as metrics_lib

def compute_dtype(config):
  return jnp.dtype(config.train.compute_dtype)


def build_encoder(config, dtype=jnp.float32):
  m = config.model
  return vit.CmrEncoder(
      num_frames=config.data.cmr_frames, image_size=config.data.cmr_size, patch_size=m.patch_size,
      width=m.width, depth=m.depth, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
      patch_frames=m.patch_frames, pool=m.pool, norm_eps=m.norm_eps, exact_gelu=m.exact_gelu,
      dtype=dtype, stack=layers.Stack.of(m))


def restore_encoder(reference, mesh):
  """(encoder, params, step, config) of a mae checkpoint, rebuilt from its saved config."""
  from cardionets_jax.train import checkpoint as ckpt_lib
  config = ckpt_lib.saved_config(reference)
  encoder = build_encoder(config)
  video = jnp.zeros((1,) + cmr_shape(config), jnp.uint8)
  params, step = common.restore_params(reference, ("params", "encoder"),
                                       lambda r: encoder.init(r, video)["params"], mesh)
  return encoder, params, step, config


def build_model(config):
  m, dtype = config.model, compute_dtype(config)
  return vit.MaskedAutoencoder(
      encoder=build_encoder(config, dtype), decoder_width=m.decoder_width,
      decoder_depth=m.decoder_depth, decoder_heads=m.decoder_heads,
      decoder_mlp_dim=m.decoder_mlp_dim, mask_ratio=config.mae.mask_ratio, dtype=dtype)


def cmr_shape(config):
  return (config.data.cmr_frames, config.data.cmr_size, config.data.cmr_size)


def init_params(model, config, rng):
  video = jnp.zeros((1,) + cmr_shape(config), jnp.uint8)
  return model.init({"params": rng, "mask": rng}, video)["params"]


def per_example_loss(model, config, params, video, rng):
  pred, mask = model.apply({"params": params}, video, rngs={"mask": rng})
  target = vit.patchify(vit.cmr_to_float(video), model.encoder.patch)
  return jax.vmap(lambda p, t, m: losses.mae_loss(p[None], t[None], m[None], config.mae.norm_pix_loss))(
      pred, target, mask)


def make_task(config):
  model = build_model(config)

  def loss_fn(params, frozen, batch, rng, step):
    del frozen, step
    pred, mask = model.apply({"params": params}, batch["cmr"], train=True, rngs={"mask": rng})
    target = vit.patchify(vit.cmr_to_float(batch["cmr"]), model.encoder.patch)
    return losses.mae_loss(pred, target, mask, config.mae.norm_pix_loss), {}

  return model, loop.Task(init_params=lambda rng: init_params(model, config, rng),
                          loss_fn=loss_fn, spec={"cmr": (cmr_shape(config), jnp.uint8)})


def _token_counts(config):
  m = config.model
  shape = cmr_shape(config)
  patch = vit.patch_shape(shape[0], m.patch_size, m.patch_frames)
  n = vit.num_tokens(shape, patch)
  return n, int(np.prod(patch)), max(1, int(round(n * (1.0 - config.mae.mask_ratio))))


def encoder_flops(config):
  """Forward FLOPs of the CMR encoder on one whole (unmasked) cine."""
  m = config.model
  n, patch_dim, _ = _token_counts(config)
  return 2 * n * patch_dim * m.width + layers.transformer_flops(n + 1, m.width, m.depth, m.mlp_dim)


def train_flops_per_example(config):
  """Analytic FLOPs of one training example (forward + backward = 3x forward)."""
  m = config.model
  n, patch_dim, n_keep = _token_counts(config)
  forward = (2 * n * patch_dim * m.width
             + layers.transformer_flops(n_keep + 1, m.width, m.depth, m.mlp_dim)
             + 2 * (n_keep + 1) * m.width * m.decoder_width
             + layers.transformer_flops(n + 1, m.decoder_width, m.decoder_depth, m.decoder_mlp_dim)
             + 2 * n * m.decoder_width * patch_dim)
  return 3 * forward


class Evaluator:
  """Held-out masked reconstruction loss and a ridge probe of the encoder."""

  def __init__(self, config, model, trainer, data_dir, meta):
    self.config, self.model, self.trainer = config, model, trainer
    self.data_dir, self.meta = data_dir, meta
    param_shardings = trainer.shardings.params
    out = mesh_lib.replicated(trainer.mesh)
    self._loss = jax.jit(lambda p, v, r: per_example_loss(model, config, p, v, r),
                         in_shardings=(param_shardings, None, None), out_shardings=out)
    # Features under every pooling (vit.POOLS), so results.json shows what each one keeps.
    def pooled(pool):
      encoder = model.encoder.clone(pool=pool)
      return jax.jit(lambda p, v: encoder.apply({"params": p["encoder"]}, v),
                     in_shardings=(param_shardings, None), out_shardings=out)
    self._features = {pool: pooled(pool) for pool in vit.POOLS}
    self._recon = jax.jit(lambda p, v, r: model.apply({"params": p}, v, rngs={"mask": r}),
                          in_shardings=(param_shardings, None, None), out_shardings=out)

  def _map(self, fn, split, keep=(), limit=None):
    t = self.trainer
    return splits.map_split(fn, self.data_dir, split, ("cmr",), t.mesh, t.rules, keep=keep,
                            limit=limit)

  def split(self, name):
    return splits.choose(self.meta, name, self.config.data)

  def reconstruction_loss(self, params, split="val"):
    """Mean per-example masked loss; the masks are fixed (the same every call)."""
    rng = jax.random.PRNGKey(self.config.seed + 1)
    losses_, _ = self._map(lambda b: self._loss(params, b["cmr"], rng), self.split(split))
    return float(np.mean(losses_))

  def features(self, params, split, limit=None, pool=None):
    fn = self._features[pool or self.config.model.pool]
    feats, kept = self._map(lambda b: fn(params, b["cmr"]), split, keep=("phenotypes",),
                            limit=limit)
    return feats, kept["phenotypes"]

  def probe(self, params, pool=None):
    """Ridge probe of the features (`model.pool`'s, or `pool`'s) onto every phenotype."""
    roles, data = probe.features_by_role(lambda s, n: self.features(params, s, n, pool),
                                         self.meta, self.config.data)
    return probe.phenotype_probe(data, roles, self.config.probe.alphas, self.meta.phenotype_names)

  def reconstruction_figure(self, params, path, num_subjects=3, num_frames=4):
    """Original, masked and reconstructed frames of held-out subjects."""
    batch, _ = next(pipeline.eval_batches(self.data_dir, self.split("test"), ("cmr",),
                                          splits.EVAL_BATCH))
    t = self.trainer
    with mesh_lib.active(t.mesh, t.rules):
      dev = mesh_lib.replicated_batch(batch, t.mesh, t.rules)
      pred, mask = self._recon(params, dev["cmr"], jax.random.PRNGKey(0))
    pred, mask = mesh_lib.to_host(pred), mesh_lib.to_host(mask)
    if jax.process_index() != 0:
      return
    patch = self.model.encoder.patch
    shape = cmr_shape(self.config)
    video = vit.cmr_to_float(jnp.asarray(batch["cmr"]))
    target = vit.patchify(video, patch)
    pred = np.asarray(pred)
    if self.config.mae.norm_pix_loss:  # back to pixels with each patch's own statistics
      mean, std = target.mean(-1, keepdims=True), jnp.sqrt(target.var(-1, keepdims=True) + 1e-6)
      pred = pred * std + mean
    mask = np.asarray(mask)[..., None]
    masked = np.asarray(vit.unpatchify(target * (1 - mask) - mask, patch, shape))
    recon = np.asarray(vit.unpatchify(target * (1 - mask) + pred * mask, patch, shape))
    rows = [(title, arr[s]) for s in range(num_subjects)
            for title, arr in (("original", np.asarray(video)), ("masked", masked),
                               ("reconstructed", recon))]
    plots.frame_grid(path, rows, "MAE on held-out subjects", num_frames=num_frames, cell=1.6)


def run(config, context):
  start = time.time()
  workdir = context.workdir
  data_dir, meta, model, trainer = common.open_stage(config, context, "mae", make_task)
  evaluator = Evaluator(config, model, trainer, data_dir, meta)

  # The freshly initialised encoder is the baseline (init is deterministic per
  # seed, so this holds on a resumed run too).
  init_loss = evaluator.reconstruction_loss(trainer.state.params)
  init_probe = evaluator.probe(trainer.state.params)
  metrics_lib.log("Before training: held-out reconstruction loss %.4f", init_loss)

  def on_eval(state, step, writer):
    loss = evaluator.reconstruction_loss(state.params)
    writer.write(step, {"loss": loss}, split="val")
    metrics_lib.log("step %d: held-out reconstruction loss %.4f", step, loss)

  state = trainer.fit(on_eval)
  final_loss = evaluator.reconstruction_loss(state.params)
  probed = evaluator.probe(state.params)
  by_pool = {pool: probed["r2"] if pool == config.model.pool
             else evaluator.probe(state.params, pool)["r2"] for pool in vit.POOLS}
  step = int(state.step)
  results = dict(
      stage="mae", variant=config.variant, step=step,
      heldout_reconstruction_loss=dict(initial=init_loss, final=final_loss,
                                       split=evaluator.split("val")),
      probe_r2=probed["r2"], probe_r2_random_init=init_probe["r2"], probe_alpha=probed["alpha"],
      probe_splits=probed["splits"], probe_r2_by_pool=by_pool,
      num_examples={s: v["num_examples"] for s, v in meta.splits.items()},
      data=data_dir, checkpoint=f"{trainer.checkpoint_dir}/{step}",
      wall_time_s=time.time() - start)
  figure = workdir.file("mae", "reconstructions.png")
  evaluator.reconstruction_figure(state.params, figure)  # every process computes, process 0 draws
  common.write_results(workdir, "mae", results)
  metrics_lib.log("Held-out reconstruction loss %.4f -> %.4f", init_loss, final_loss)
  for name, r2 in probed["r2"].items():
    metrics_lib.log("probe R2 %-18s %6.3f (random init %6.3f; by pooling: %s)", name, r2,
                    init_probe["r2"][name],
                    ", ".join(f"{pool} {by_pool[pool][name]:.3f}" for pool in vit.POOLS))
  return results


STAGE = stages.Stage(name="mae", upstream=lambda config: (), hands_on="params/encoder (CmrEncoder)",
                     run=run, task=lambda config: make_task(config)[-1],
                     train_flops=train_flops_per_example)
