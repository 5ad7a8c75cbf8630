"""The vae stage end to end on a tiny cohort: trains, evaluates, writes its figures."""

import json
import math
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
  # The error of each frame, over the held-out cines (its PSNR, by Jensen, at most the mean's).
  mse = held["mse_per_frame"]
  assert len(mse) == 8 and min(mse) > 0
  assert sum(10 * math.log10(4 / m) for m in mse) / 8 <= held["psnr"] + 1e-3
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
  crops = np.asarray(vae_stage.random_window(video, (9, 24, 24), 0, jax.random.PRNGKey(0)))
  assert crops.shape == (2, 9, 24, 24)
  corners = set()
  for b in range(2):
    (f, h, w), = np.argwhere(video[b] == crops[b, 0, 0, 0])
    np.testing.assert_array_equal(crops[b], video[b, f:f + 9, h:h + 24, w:w + 24])
    corners.add((f, h, w))
  assert len(corners) == 2  # each cine gets its own window
  # A cine smaller than the window along an axis is kept whole along it; () keeps it whole.
  small = vae_stage.random_window(video[:, :8], (9, 24, 24), 0, jax.random.PRNGKey(0))
  assert small.shape == (2, 8, 24, 24)
  assert vae_stage.random_window(video, (), 0, jax.random.PRNGKey(0)).shape == video.shape
  # With cyclic context: 2 frames of the same cycle either side, wrapping past frame 24 to 0.
  starts = set()
  for seed in range(6):
    windows = np.asarray(vae_stage.random_window(video, (9, 24, 24), 2, jax.random.PRNGKey(seed)))
    assert windows.shape == (2, 13, 24, 24)
    for b in range(2):
      (f, h, w), = np.argwhere(video[b] == windows[b, 0, 0, 0])
      frames = (f + np.arange(13)) % 25
      np.testing.assert_array_equal(windows[b], video[b][frames][:, h:h + 24, w:w + 24])
      starts.add(int(f))
  assert any(f > 25 - 13 for f in starts)   # some windows wrap around the cycle
  whole = np.asarray(vae_stage.random_window(video, (), 2, jax.random.PRNGKey(0)))
  np.testing.assert_array_equal(whole, video[:, np.arange(-2, 27) % 25])


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
