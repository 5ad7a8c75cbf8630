"""Stage 2: the ECG encoder aligned to the frozen CMR encoder with weighted InfoNCE.

Takes `params/encoder` from the mae stage (frozen: no gradient, no optimizer
state); hands on `params/ecg_encoder` (and both projectors) through its
Orbax checkpoint.
"""

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax import evaluate
from cardionets_jax import losses
from cardionets_jax.data import datasets
from cardionets_jax.data import synthetic
from cardionets_jax.evaluators import embeddings
from cardionets_jax.evaluators import probe
from cardionets_jax.evaluators import retrieval
from cardionets_jax.evaluators import splits
from cardionets_jax.models import ecg as ecg_models
from cardionets_jax.models import layers
from cardionets_jax import stages
from cardionets_jax.stages import common
from cardionets_jax.stages import context as context_lib
from cardionets_jax.stages import mae
from cardionets_jax.train import checkpoint as ckpt_lib
from cardionets_jax.train import loop
from cardionets_jax.train import metrics as metrics_lib

PCA_FIT_LIMIT = 4096


class AlignModel(nn.Module):
  """The ECG encoder and the two projectors into the shared space."""
  ecg_encoder: ecg_models.EcgEncoder
  embed_dim: int
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.ecg_proj = layers.logical_dense(self.embed_dim, ("embed", None), dtype=self.dtype)
    self.cmr_proj = layers.logical_dense(self.embed_dim, ("embed", None), dtype=self.dtype)

  def ecg_features(self, ecg, lead_mask, train=False):
    return self.ecg_encoder(ecg, lead_mask, train)

  def embed_ecg(self, features):
    return self.ecg_proj(features).astype(jnp.float32)

  def embed_cmr(self, cmr_features):
    return self.cmr_proj(cmr_features).astype(jnp.float32)

  def __call__(self, ecg, lead_mask, cmr_features, train=False):
    return self.embed_ecg(self.ecg_features(ecg, lead_mask, train)), self.embed_cmr(cmr_features)


def build_ecg_encoder(config, dtype=jnp.float32):
  m = config.model
  return ecg_models.EcgEncoder(num_samples=m.num_samples, patch_size=m.patch_size, width=m.width,
                               depth=m.depth, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
                               norm_eps=m.norm_eps, exact_gelu=m.exact_gelu,
                               patch_norm=m.patch_norm, pool=m.pool, dtype=dtype,
                               stack=layers.Stack.of(m))


def build_model(config):
  dtype = jnp.dtype(config.train.compute_dtype)
  return AlignModel(build_ecg_encoder(config, dtype), config.model.embed_dim, dtype)


def example_spec(config, num_phenotypes):
  d = config.data
  return {"ecg": ((12, synthetic.ECG_SAMPLES), jnp.float32), "lead_mask": ((12,), jnp.uint8),
          "cmr": ((d.cmr_frames, d.cmr_size, d.cmr_size), jnp.uint8),
          "phenotypes": ((num_phenotypes,), jnp.float32)}


def restore_ecg(reference, mesh):
  """(model, params, step, config) of an align checkpoint's ECG side (encoder and ECG projector),
  rebuilt from its saved config: how tokenize and screening load the aligned ECG encoder."""
  config = ckpt_lib.saved_config(reference)
  model = build_model(config)

  def init(rng):
    ecg = jnp.zeros((1, 12, config.model.num_samples), jnp.float32)
    embed = lambda m, x, mask: m.embed_ecg(m.ecg_features(x, mask))
    return model.init(rng, ecg, jnp.ones((1, 12), jnp.uint8), method=embed)["params"]

  params, step = common.restore_params(reference, ("params",), init, mesh)
  return model, params, step, config


def random_crop(ecg, rng, length):
  """A random window of `length` samples per example: (B, L, T) -> (B, L, length)."""
  starts = jax.random.randint(rng, (ecg.shape[0],), 0, ecg.shape[-1] - length + 1)
  return jax.vmap(lambda x, s: jax.lax.dynamic_slice_in_dim(x, s, length, axis=-1))(ecg, starts)


def eval_crops(ecg, length, count):
  """`count` evenly spaced windows, first to last: a list of (B, L, length)."""
  starts = np.linspace(0, ecg.shape[-1] - length, count).round().astype(int)
  return [ecg[..., s:s + length] for s in starts]


def crop_averaged(model, params, ecg, lead_mask, config):
  """ECG features and aligned embedding, each averaged over `align.eval_crops` crops: how the
  ECG encoder is read at evaluation, by tokenize (for the generator) and by screening."""
  feats = [model.apply({"params": params}, crop, lead_mask, method=model.ecg_features)
           for crop in eval_crops(ecg, config.model.num_samples, config.align.eval_crops)]
  embeddings = [model.apply({"params": params}, f, method=model.embed_ecg) for f in feats]
  return jnp.mean(jnp.stack(feats), axis=0), jnp.mean(jnp.stack(embeddings), axis=0)


def augment(ecg, lead_mask, rng, num_samples, noise_std=0.0, lead_dropout=0.0):
  """Training-time ECG augmentation: a random crop of `num_samples`, Gaussian noise of
  `noise_std` times each example's std, each lead dropped with probability `lead_dropout`."""
  crop_rng, noise_rng, drop_rng = jax.random.split(rng, 3)
  ecg = random_crop(ecg, crop_rng, num_samples)
  if noise_std:
    scale = jnp.std(ecg, axis=(1, 2), keepdims=True)
    ecg = ecg + noise_std * scale * jax.random.normal(noise_rng, ecg.shape, ecg.dtype)
  if lead_dropout:
    keep = jax.random.bernoulli(drop_rng, 1.0 - lead_dropout, lead_mask.shape)
    dropped = lead_mask * keep.astype(lead_mask.dtype)
    # Never drop every lead of an example.
    lead_mask = jnp.where(jnp.any(dropped > 0, axis=1, keepdims=True), dropped, lead_mask)
  return ecg, lead_mask


PHI_NORMS = ("none", "unit")
TEACHERS = ("mae", "random")   # align.teacher: the trained mae encoder, or its random init


def descriptors(cmr_features, phenotypes, frozen, config):
  """phi: the clinical descriptor W is computed from (W_ik = 1 - exp(-|phi_i - phi_k|^2 / sigma^2)).

  `align.phi`: "pca" the frozen CMR features projected on their training-split principal axes
  (the release); "phenotypes" the z-scored phenotypes (missing -> 0).
  `align.phi_norm`: "none" (the release) keeps their scale: with 128 raw PCA scores |phi_i - phi_k|
  is large next to sigma = 0.5, so W is close to 1 for nearly every pair and the loss is close to
  plain InfoNCE. "unit" scales each row to unit norm: squared distances lie in [0, 4], the range
  sigma = 0.5 is set for, and W really down-weights negatives that resemble the positive.
  """
  a = config.align
  if a.phi == "pca":
    phi = (cmr_features - frozen["pca_mean"]) @ frozen["pca_components"]
  elif a.phi == "phenotypes":
    phi = jnp.nan_to_num((phenotypes - frozen["phen_mean"]) / frozen["phen_std"])
  else:
    raise ValueError(f"align.phi must be 'pca' or 'phenotypes', got {a.phi!r}")
  if a.phi_norm == "unit":
    return phi / jnp.maximum(jnp.linalg.norm(phi, axis=-1, keepdims=True), 1e-6)
  if a.phi_norm != "none":
    raise ValueError(f"align.phi_norm must be one of {PHI_NORMS}, got {a.phi_norm!r}")
  return phi


def make_task(config, context=None, data_dir=None, meta=None):
  """The align task. With a `context` (and the cohort's `data_dir`, `meta`) the frozen CMR encoder
  is the upstream mae checkpoint, rebuilt from its saved config; without one (shape-only users:
  tests, benchmarks, AOT compiles) it is configs/mae.py's at the same variant, randomly initialised."""
  model = build_model(config)
  mae_config = context_lib.upstream_config("mae", config, context)
  cmr_encoder = mae.build_encoder(mae_config, jnp.dtype(config.train.compute_dtype))
  num_phenotypes = len(meta.phenotype_names) if meta else len(synthetic.PHENOTYPES)
  cmr_shape = (1, config.data.cmr_frames, config.data.cmr_size, config.data.cmr_size)
  width = cmr_encoder.feature_dim

  def init_params(rng):
    ecg = jnp.zeros((1, 12, config.model.num_samples), jnp.float32)
    feats = jnp.zeros((1, width), jnp.float32)
    return model.init(rng, ecg, jnp.ones((1, 12), jnp.uint8), feats)["params"]

  def init_frozen():
    k = min(config.align.pca_dim, width)
    return dict(cmr_encoder=cmr_encoder.init(jax.random.PRNGKey(0), jnp.zeros(cmr_shape, jnp.uint8))["params"],
                pca_mean=jnp.zeros((width,)), pca_components=jnp.eye(width, k),
                phen_mean=jnp.zeros((num_phenotypes,)), phen_std=jnp.ones((num_phenotypes,)))

  def loss_fn(params, frozen, batch, rng, step):
    a = config.align
    ecg, lead_mask = augment(batch["ecg"], batch["lead_mask"], rng, config.model.num_samples,
                             a.noise_std, a.lead_dropout)
    cmr_features = jax.lax.stop_gradient(
        cmr_encoder.apply({"params": frozen["cmr_encoder"]}, batch["cmr"]))
    e, c = model.apply({"params": params}, ecg, lead_mask, cmr_features, train=True)
    phi = descriptors(cmr_features, batch["phenotypes"], frozen, config)
    return losses.weighted_info_nce(e, c, phi, tau=config.align.tau, sigma=config.align.sigma,
                                    weighted=config.align.weighted)

  load_frozen = load_params = None
  if context is not None:
    if config.align.teacher not in TEACHERS:
      raise ValueError(f"align.teacher must be one of {TEACHERS}, got {config.align.teacher!r}")
    load_frozen = functools.partial(_load_frozen, upstream=context.upstream("mae", config),
                                    data_dir=data_dir, meta=meta, cmr_encoder=cmr_encoder,
                                    teacher=config.align.teacher, seed=config.seed)
    if config.align.ecg_init == "stmem":
      load_params = functools.partial(_load_stmem_encoder, context.upstream("stmem", config))
  task = loop.Task(init_params=init_params, loss_fn=loss_fn,
                   spec=example_spec(config, num_phenotypes), init_frozen=init_frozen,
                   load_frozen=load_frozen, load_params=load_params)
  return model, cmr_encoder, task


def _load_stmem_encoder(source, abstract, mesh, rules):
  """The ECG encoder's initial weights: an stmem checkpoint's (trained or converted)."""
  del mesh, rules
  encoder, step = ckpt_lib.restore_subtree(source.reference, ("params", "encoder"),
                                           abstract["ecg_encoder"])
  metrics_lib.log("ECG encoder initialised from ST-MEM weights %s (step %d)", source.path, step)
  return {"ecg_encoder": encoder}


def _load_frozen(abstract, mesh, rules, upstream, data_dir, meta, cmr_encoder, teacher, seed):
  """The upstream mae encoder (or, `align.teacher=random`, the same architecture at a seeded
  random initialisation: what the teacher's training adds) and the PCA of its features."""
  if teacher == "random":
    cmr_shape = (1,) + tuple(meta.shapes["cmr"])
    init = cmr_encoder.init(jax.random.PRNGKey(seed), jnp.zeros(cmr_shape, jnp.uint8))["params"]
    encoder_params = jax.tree.map(lambda v, a: jax.device_put(v, a.sharding), nn.unbox(init),
                                  abstract["cmr_encoder"])
    metrics_lib.log("Frozen CMR encoder: randomly initialised (seed %d), the architecture of %s",
                    seed, upstream.path)
  else:
    encoder_params, step = ckpt_lib.restore_subtree(upstream.reference, ("params", "encoder"),
                                                    abstract["cmr_encoder"])
    metrics_lib.log("Frozen CMR encoder: %s (step %d)", upstream.path, step)
  features_fn = jax.jit(lambda v: cmr_encoder.apply({"params": encoder_params}, v))
  feats, _ = splits.map_split(lambda b: features_fn(b["cmr"]), data_dir, "train", ("cmr",), mesh,
                              rules, limit=PCA_FIT_LIMIT)
  k = abstract["pca_components"].shape[1]
  pca_mean, pca_components = evaluate.pca_fit(feats, k)
  values = dict(cmr_encoder=encoder_params, pca_mean=pca_mean, pca_components=pca_components,
                phen_mean=np.asarray(meta.phenotype_mean, np.float32),
                phen_std=np.asarray(meta.phenotype_std, np.float32))
  return jax.tree.map(lambda v, a: jax.device_put(jnp.asarray(v, a.dtype), a.sharding), values,
                      abstract)


def train_flops_per_example(config):
  m = config.model
  ecg = ecg_models.ecg_flops(m.num_samples, m.patch_size, m.width, m.depth, m.mlp_dim)
  cmr_forward = mae.encoder_flops(context_lib.upstream_config("mae", config))
  return 3 * ecg + cmr_forward  # the frozen CMR encoder runs forward only


class Evaluator:
  """Held-out retrieval and phenotype probes."""

  def __init__(self, config, model, cmr_encoder, trainer, data_dir, meta):
    self.config, self.trainer, self.data_dir, self.meta = config, trainer, data_dir, meta

    def embed(params, frozen, batch):
      ecg_feat, ecg_emb = crop_averaged(model, params, batch["ecg"], batch["lead_mask"], config)
      cmr_feat = cmr_encoder.apply({"params": frozen["cmr_encoder"]}, batch["cmr"])
      cmr_emb = model.apply({"params": params}, cmr_feat, method=model.embed_cmr)
      return ecg_feat, ecg_emb, cmr_feat, cmr_emb

    self._embed = jax.jit(embed)

  def embeddings(self, state, split, limit=None):
    t = self.trainer
    out, kept = splits.map_split(lambda b: self._embed(state.params, state.frozen, b),
                                 self.data_dir, split, ("ecg", "lead_mask", "cmr"), t.mesh, t.rules,
                                 keep=("phenotypes", "labels"), limit=limit)
    return out + (kept["labels"],), kept["phenotypes"]

  def evaluate(self, state):
    """Retrieval on the score split; ridge probes of ECG and CMR features onto phenotypes."""
    roles, data = probe.features_by_role(lambda s, n: self.embeddings(state, s, n), self.meta,
                                         self.config.data)
    (_, ecg_emb, _, cmr_emb, labels), phenotypes = data["score"]
    probe_of = lambda i: probe.phenotype_probe({r: (out[i], y) for r, (out, y) in data.items()},
                                               roles, self.config.probe.alphas,
                                               self.meta.phenotype_names)
    return dict(retrieval=retrieval.ecg_to_cmr(ecg_emb, cmr_emb, roles["score"]),
                ecg_probe=probe_of(0), cmr_probe=probe_of(2), test_embeddings=ecg_emb,
                test_phenotypes=phenotypes, test_labels=labels,
                separation=embeddings.neighbour_auroc(ecg_emb, labels, self.meta.label_names))


def run(config, context):
  start = time.time()
  workdir = context.workdir
  data_dir, meta = datasets.resolve(config, workdir)
  model, cmr_encoder, task = make_task(config, context, data_dir, meta)
  trainer = loop.Trainer(config, workdir, "align", data_dir, task, mesh=context.mesh)
  evaluator = Evaluator(config, model, cmr_encoder, trainer, data_dir, meta)
  baseline = evaluator.evaluate(trainer.state)  # the initial ECG encoder (random or ST-MEM)
  state = trainer.fit()
  aligned = evaluator.evaluate(state)

  results = dict(
      stage="align", variant=config.variant, step=int(state.step),
      ecg_init=config.align.ecg_init,
      loss=dict(weighted=config.align.weighted, phi=config.align.phi,
                phi_norm=config.align.phi_norm, tau=config.align.tau,
                sigma=config.align.sigma),
      retrieval=dict(aligned=aligned["retrieval"], random_init=baseline["retrieval"]),
      probe_r2=dict(aligned_ecg=aligned["ecg_probe"]["r2"],
                    random_init_ecg=baseline["ecg_probe"]["r2"],
                    cmr_encoder=aligned["cmr_probe"]["r2"]),
      probe_splits=aligned["ecg_probe"]["splits"],
      # Held-out: AUROC of each disease from the share of its 10 nearest ECG embeddings that have it.
      neighbour_auroc=dict(aligned=aligned["separation"], random_init=baseline["separation"]),
      upstream={name: context.upstream(name, config).describe(config.data)
                for name in upstream_stages(config)},
      checkpoint=f"{trainer.checkpoint_dir}/{int(state.step)}",
      wall_time_s=time.time() - start)
  if jax.process_index() == 0:
    figure = workdir.file("align", "ecg_embeddings.png")
    panels = [(title, r["test_embeddings"], r["test_phenotypes"], r["test_labels"])
              for title, r in ((f"{config.align.ecg_init}-init ECG encoder", baseline),
                               ("aligned ECG encoder", aligned))]
    embeddings.figure(figure, panels, meta.phenotype_names, meta.label_names)
    # Per held-out subject, for paired comparisons of runs on one cohort (evaluators/ablation.py).
    np.savez(workdir.file("align", "heldout.npz"), phenotypes=aligned["test_phenotypes"],
             labels=aligned["test_labels"], probe=aligned["ecg_probe"]["predictions"],
             random_init_probe=baseline["ecg_probe"]["predictions"],
             ranks=np.asarray(aligned["retrieval"]["ranks"]),
             phenotype_names=np.asarray(meta.phenotype_names))
  common.write_results(workdir, "align", results)
  top = lambda r: {k: r[k] for k in ("top1", "top5")}
  metrics_lib.log("ECG->CMR retrieval on %d held-out subjects: %s (random init %s; chance %s)",
                  aligned["retrieval"]["n"], top(aligned["retrieval"]), top(baseline["retrieval"]),
                  aligned["retrieval"]["chance"])
  for name in meta.phenotype_names:
    metrics_lib.log("probe R2 %-18s aligned ECG %6.3f  random ECG %6.3f  CMR %6.3f", name,
                    results["probe_r2"]["aligned_ecg"][name],
                    results["probe_r2"]["random_init_ecg"][name],
                    results["probe_r2"]["cmr_encoder"][name])
  return results


def upstream_stages(config):
  return ("mae",) + (("stmem",) if config.align.ecg_init == "stmem" else ())


STAGE = stages.Stage(name="align", upstream=upstream_stages,
                     hands_on="params/ecg_encoder (EcgEncoder), params/ecg_proj, params/cmr_proj",
                     run=run, task=lambda config: make_task(config)[-1],
                     train_flops=train_flops_per_example)
