"""The vae stage end to end on a tiny cohort: trains, evaluates, writes its figures."""

import json
import os


def test_vae_stage_trains_and_reports_heldout_psnr_ssim(tokenized_workdir):
  # The shared workdir's vae: 6 steps, evaluated every 3, the adversarial term from step 4.
  tmp_path = tokenized_workdir
  out = tmp_path / "vae"
  with open(out / "results.json") as f:
    results = json.load(f)
  assert results["latent_shape"] == [8, 4, 4, 4]
  assert results["heldout_test"]["psnr"] > results["heldout_initial_val"]["psnr"]
  assert results["heldout_test"]["split"] == "test" and results["heldout_initial_val"]["split"] == "val"
  # Both SSIMs, each labelled with how it is computed.
  held = results["heldout_test"]
  assert -1 <= held["ssim_gaussian11"] <= 1 and -1 <= held["ssim"] <= 1
  assert held["ssim_gaussian11"] != held["ssim"]
  assert "11 x 11 Gaussian" in held["metrics"]["ssim_gaussian11"]
  for name in ("reconstructions.png", "reconstructions.gif", "metrics.jsonl"):
    assert os.path.exists(out / name), name
  metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
  assert any("d_loss" in m for m in metrics) and any(m["split"] == "val" for m in metrics)
  # The release's loss: the outlier penalty throughout, an adaptive GAN weight once it is on.
  train = [m for m in metrics if m["split"] == "train"]
  assert all("outlier_penalty" in m for m in train)
  assert any(m["adv_weight"] > 0 and m["adv_weight"] != 0.05 for m in train)


def test_training_windows_are_slices_of_each_cine():
  import jax
  import numpy as np
  from cardionets_jax.stages import vae as vae_stage
  video = np.arange(2 * 25 * 48 * 48, dtype=np.int32).reshape(2, 25, 48, 48)  # unique values
  crops = np.asarray(vae_stage.random_crop(video, (9, 24, 24), jax.random.PRNGKey(0)))
  assert crops.shape == (2, 9, 24, 24)
  corners = set()
  for b in range(2):
    (f, h, w), = np.argwhere(video[b] == crops[b, 0, 0, 0])
    np.testing.assert_array_equal(crops[b], video[b, f:f + 9, h:h + 24, w:w + 24])
    corners.add((f, h, w))
  assert len(corners) == 2  # each cine gets its own window
  # A cine smaller than the window along an axis is kept whole along it; () keeps it whole.
  assert vae_stage.random_crop(video[:, :8], (9, 24, 24), jax.random.PRNGKey(0)).shape == (2, 8, 24, 24)
  assert vae_stage.random_crop(video, (), jax.random.PRNGKey(0)).shape == video.shape


def test_a_checkpoint_from_before_a_model_field_existed_is_refused_by_name(monkeypatch):
  import pytest
  from cardionets_jax.stages import vae as vae_stage
  from cardionets_jax.train import checkpoint as ckpt_lib
  from cardionets_jax_configs import vae as vae_configs
  old = vae_configs.get_config("variant=test")
  del old.model["mid_attention_heads"], old.model["quant_convs"]
  monkeypatch.setattr(ckpt_lib, "saved_config", lambda reference: old)
  with pytest.raises(ValueError, match=r"runs/old/vae/checkpoints/6 was saved by an older version"
                                       r".*model\.mid_attention_heads, model\.quant_convs"):
    vae_stage.restore_vae("runs/old/vae/checkpoints/6", mesh=None)
