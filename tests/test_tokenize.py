"""Tokenize on a fresh workdir: runs vae and align first; stored latents round-trip."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax.data import pipeline
from cardionets_jax.data import records
from cardionets_jax.stages import tokenize
from cardionets_jax.stages import vae as vae_stage
from cardionets_jax.train import checkpoint as ckpt_lib
from configs import tokenize as tokenize_configs


def test_tokenize_chain_and_round_trip(tokenized_workdir):
  tmp_path = tokenized_workdir
  for stage in ("mae", "align", "vae", "tokenize"):
    assert os.path.exists(tmp_path / stage / "results.json"), stage
  tokens = tokenize.tokens_dir(str(tmp_path))
  meta = records.DatasetMeta.load(tokens)
  assert meta.shapes["latent_mean"] == [8, 4, 4, 4]
  cohort_meta = records.DatasetMeta.load(str(next((tmp_path / "data").iterdir())))
  assert {s: v["num_examples"] for s, v in meta.splits.items()} == {
      s: v["num_with_cmr"] for s, v in cohort_meta.splits.items()}

  # Decoding a stored latent mean gives the VAE's reconstruction of that subject.
  config = tokenize_configs.get_config()
  config.vae_config.model.base_channels = 4
  config.vae_config.data.update(cmr_frames=8, cmr_size=16)
  vae = vae_stage.build_vae(config.vae_config)
  video = jnp.zeros((1, 8, 16, 16), jnp.uint8)
  abstract = jax.tree.map(lambda x: x, jax.eval_shape(
      lambda r: vae.init({"params": r, "sample": r}, video)["params"], jax.random.PRNGKey(0)))
  import flax.linen as nn
  params, _ = ckpt_lib.restore_subtree(str(tmp_path / "vae" / "checkpoints"), ("params", "vae"),
                                       nn.unbox(abstract))
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
