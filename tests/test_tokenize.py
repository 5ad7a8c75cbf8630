"""Tokenize on a fresh workdir: runs vae and align first; stored latents round-trip; the tokens
record what made them."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax.data import pipeline
from cardionets_jax.data import records
from cardionets_jax.stages import vae as vae_stage
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.workdir import Workdir


def test_tokenize_chain_and_round_trip(tokenized_workdir):
  tmp_path = tokenized_workdir
  for stage in ("mae", "align", "vae", "tokenize"):
    assert os.path.exists(tmp_path / stage / "results.json"), stage
  tokens = Workdir(tmp_path).tokens
  meta = records.DatasetMeta.load(tokens)
  assert meta.shapes["latent_mean"] == [8, 4, 4, 4]
  assert meta.provenance["vae"] == dict(checkpoint=f"{tmp_path}/vae/checkpoints", step=6,
                                        latent_norm="layer_norm")
  assert meta.provenance["align"] == dict(checkpoint=f"{tmp_path}/align/checkpoints", step=4)
  assert meta.provenance["tokenize_config"]["stage"] == "tokenize"
  cohort_meta = records.DatasetMeta.load(str(next((tmp_path / "data").iterdir())))
  assert {s: v["num_examples"] for s, v in meta.splits.items()} == {
      s: v["num_with_cmr"] for s, v in cohort_meta.splits.items()}

  # Decoding a stored latent mean gives the VAE's reconstruction of that subject.
  mesh = mesh_lib.data_mesh(jax.devices()[:1])
  vae, params, _, _ = vae_stage.restore_vae(str(tmp_path / "vae" / "checkpoints"), mesh)
  tokens_batch, _ = next(pipeline.eval_batches(tokens, "test", ("subject_id", "latent_mean"), 4))
  cohort_dir = str(next((tmp_path / "data").iterdir()))
  cines = {}
  for batch, valid in pipeline.eval_batches(cohort_dir, "test", ("subject_id", "cmr"), 16):
    cines.update({bytes(batch["subject_id"][i]): batch["cmr"][i] for i in range(valid)})
  for sid, latent in zip(tokens_batch["subject_id"], tokens_batch["latent_mean"]):
    cine = jnp.asarray(cines[bytes(sid)])[None]
    mean = vae.apply({"params": params}, cine, method=vae.encode).mean
    np.testing.assert_allclose(latent, mean[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(vae.apply({"params": params}, jnp.asarray(latent)[None], method=vae.decode),
                               vae.apply({"params": params}, mean, method=vae.decode), rtol=1e-4, atol=1e-5)
  # The generator streams them through the training pipeline.
  it = pipeline.train_iterator(tokens, "train", ("latent_mean", "ecg_embedding"), 4, seed=0)
  batch = next(it)
  assert batch["latent_mean"].shape == (4, 8, 4, 4, 4) and batch["ecg_embedding"].shape == (4, 256)
