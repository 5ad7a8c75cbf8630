"""Tokenize: every subject's VAE latent (mean, log-variance) and aligned ECG embedding.

Written as a TFDS dataset under `<workdir>/tokens/` and streamed by the same
Grain pipeline as the cohort, so the generator never runs the VAE encoder
while it trains.
"""

import json
import os
import time

import jax
import jax.numpy as jnp

from cardionets_jax.data import datasets
from cardionets_jax.data import records
from cardionets_jax.models import vae3d
from cardionets_jax.stages import align
from cardionets_jax.stages import common
from cardionets_jax.stages import vae as vae_stage
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import metrics as metrics_lib


def tokens_dir(workdir):
  return os.path.join(workdir, "tokens")


def run(config, workdir):
  from cardionets_jax import stages
  start = time.time()
  data_dir, meta = datasets.resolve(config, workdir)
  vae_ckpt = common.upstream_checkpoint(config.init.vae_checkpoint, workdir, "vae",
                                        lambda: stages.get("vae").run(config.vae_config, workdir))
  align_ckpt = common.upstream_checkpoint(
      config.init.align_checkpoint, workdir, "align",
      lambda: stages.get("align").run(config.align_config, workdir))
  mesh, rules = mesh_lib.make_mesh(config.mesh), mesh_lib.axis_rules(config.mesh)

  vae = vae_stage.build_vae(config.vae_config)
  video = jnp.zeros((1,) + vae_stage.cmr_shape(config.vae_config), jnp.uint8)
  vae_params, vae_step = common.restore_params(
      vae_ckpt, ("params", "vae"),
      lambda r: vae.init({"params": r, "sample": r}, video)["params"], mesh)
  model, _, align_task = align.make_task(config.align_config)
  align_params, align_step = common.restore_params(align_ckpt, ("params",), align_task.init_params,
                                                   mesh)
  acfg = config.align_config

  @jax.jit
  def encode(batch):
    posterior = vae.apply({"params": vae_params}, batch["cmr"], method=vae.encode)
    _, embedding = align.crop_averaged(model, align_params, batch["ecg"], batch["lead_mask"], acfg)
    return posterior.mean, posterior.logvar, embedding

  def split_examples(split):
    def generate():
      (mean, logvar, emb), kept = common.map_split(
          encode, data_dir, split, ("cmr", "ecg", "lead_mask"), mesh, rules,
          keep=("subject_id", "phenotypes", "labels"), batch_size=16)
      for i in range(len(mean)):
        yield dict(subject_id=kept["subject_id"][i].decode(), latent_mean=mean[i],
                   latent_logvar=logvar[i], ecg_embedding=emb[i],
                   phenotypes=kept["phenotypes"][i], labels=kept["labels"][i])
    return generate

  m = config.vae_config.model
  latent_shape = list(vae3d.latent_shape(vae_stage.cmr_shape(config.vae_config), tuple(m.channel_mult),
                                         tuple(m.temporal_down), m.latent_channels))
  out_meta = records.DatasetMeta(
      phenotype_names=meta.phenotype_names, phenotype_units=meta.phenotype_units,
      label_names=meta.label_names,
      shapes=dict(latent_mean=latent_shape, latent_logvar=latent_shape,
                  ecg_embedding=[acfg.model.embed_dim]),
      source=f"vae {vae_ckpt} (step {vae_step}); align {align_ckpt} (step {align_step}); data {data_dir}")
  splits = {s: split_examples(s) for s, info in meta.splits.items() if info["num_with_cmr"]}
  out = tokens_dir(workdir)
  counts = {s: meta.splits[s]["num_with_cmr"] for s in splits}
  results = dict(stage="tokenize", variant=config.variant, tokens=out, num_examples=counts,
                 latent_shape=latent_shape, vae_checkpoint=vae_ckpt, vae_step=int(vae_step),
                 align_checkpoint=align_ckpt, align_step=int(align_step), data=data_dir)
  if jax.process_index() == 0:
    directory = records.write_dataset(
        out, splits, out_meta, builder_cls=records.CardionetsTokens,
        feature_dict=records.token_features(latent_shape, acfg.model.embed_dim,
                                            len(meta.phenotype_names), len(meta.label_names)))
    results["wall_time_s"] = time.time() - start
    # Written last: its presence tells downstream stages the tokens are complete.
    os.makedirs(os.path.join(workdir, "tokenize"), exist_ok=True)
    with open(os.path.join(workdir, "tokenize", "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    metrics_lib.log("Tokenized %s into %s in %.1fs", counts, directory, time.time() - start)
  return results

