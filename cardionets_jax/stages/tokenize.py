"""Tokenize: every subject's VAE latent (mean, log-variance) and aligned ECG embedding.

Written as a TFDS dataset under the workdir's tokens folder and streamed by the same Grain
pipeline as the cohort, so the generator never runs the VAE encoder while it trains. The
dataset records, as data, the VAE and align checkpoints (paths and steps) and the config that
made it: the generator decodes with exactly that VAE.
"""

import time

import jax

from cardionets_jax import stages
from cardionets_jax.data import datasets
from cardionets_jax.data import records
from cardionets_jax.evaluators import splits
from cardionets_jax.stages import align
from cardionets_jax.stages import common
from cardionets_jax.stages import vae as vae_stage
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import metrics as metrics_lib


def run(config, context):
  start = time.time()
  workdir = context.workdir
  data_dir, meta = datasets.resolve(config, workdir)
  vae_up, align_up = context.upstream("vae", config), context.upstream("align", config)
  mesh = common.default_mesh(context.mesh, config)
  rules = mesh_lib.axis_rules(config.mesh)
  vae, vae_params, vae_step, vae_config = vae_stage.restore_vae(vae_up.reference, mesh)
  model, align_params, align_step, acfg = align.restore_ecg(align_up.reference, mesh)

  @jax.jit
  def encode(batch):
    posterior = vae.apply({"params": vae_params}, batch["cmr"], method=vae.encode)
    _, embedding = align.crop_averaged(model, align_params, batch["ecg"], batch["lead_mask"], acfg)
    return posterior.mean, posterior.logvar, embedding

  def split_examples(split):
    def generate():
      (mean, logvar, emb), kept = splits.map_split(
          encode, data_dir, split, ("cmr", "ecg", "lead_mask"), mesh, rules,
          keep=("subject_id", "phenotypes", "labels"), batch_size=config.tokenize.batch_size)
      for i in range(len(mean)):
        yield dict(subject_id=kept["subject_id"][i].decode(), latent_mean=mean[i],
                   latent_logvar=logvar[i], ecg_embedding=emb[i],
                   phenotypes=kept["phenotypes"][i], labels=kept["labels"][i])
    return generate

  latent_shape = list(vae_stage.latent_shape(vae_config))
  made_by = dict(vae=dict(checkpoint=vae_up.path, step=int(vae_step), latent_norm=vae.latent_norm),
                 align=dict(checkpoint=align_up.path, step=int(align_step)),
                 data=data_dir, tokenize_config=config.to_dict())
  out_meta = records.DatasetMeta(
      phenotype_names=meta.phenotype_names, phenotype_units=meta.phenotype_units,
      label_names=meta.label_names,
      shapes=dict(latent_mean=latent_shape, latent_logvar=latent_shape,
                  ecg_embedding=[acfg.model.embed_dim]),
      source=f"vae {vae_up.reference}; align {align_up.reference}; data {data_dir}",
      provenance=made_by)
  by_split = {s: split_examples(s) for s, info in meta.splits.items() if info["num_with_cmr"]}
  counts = {s: meta.splits[s]["num_with_cmr"] for s in by_split}
  results = dict(stage="tokenize", variant=config.variant, tokens=workdir.tokens,
                 num_examples=counts, latent_shape=latent_shape,
                 upstream=dict(vae=vae_up.describe(config.data), align=align_up.describe(config.data)),
                 data=data_dir)
  if jax.process_index() == 0:
    directory = records.write_dataset(
        workdir.tokens, by_split, out_meta, name=records.TOKENS_NAME,
        feature_dict=records.token_features(latent_shape, acfg.model.embed_dim,
                                            len(meta.phenotype_names), len(meta.label_names)))
    metrics_lib.log("Tokenized %s into %s in %.1fs", counts, directory, time.time() - start)
  results["wall_time_s"] = time.time() - start
  common.write_results(workdir, "tokenize", results)
  return results


STAGE = stages.Stage(name="tokenize", upstream=lambda config: ("vae", "align"),
                     hands_on="the tokens dataset (latent mean, log-variance, ECG embedding)",
                     run=run)
