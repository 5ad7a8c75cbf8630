"""PyTorch checkpoints -> our stages: outputs equal PyTorch's on the same weights.

The goldens (tests/golden/make_parity_golden.py, run by hand with torch and timm) hold, at a
reduced width, an ST-MEM ViT with the release's projector head and with its MIMIC classifier
head, a timm ViT over 50 x 96 x 96 cines, and their PyTorch outputs on seeded random inputs.
"""

import json
import os
import sys

import numpy as np
import pytest

from cardionets_jax.convert import __main__ as convert
from cardionets_jax.convert import mapping
from cardionets_jax.convert import pth_reader

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
sys.path.insert(0, GOLDEN)
from parity_inputs import checksum, inputs  # noqa: E402  pylint: disable=wrong-import-position

HEADS = 2         # the goldens' heads (weights do not say; at base width / 64 is right)
TOLERANCE = 1e-4  # float32, max abs difference of the features


@pytest.fixture(scope="module")
def golden():
  values = np.load(os.path.join(GOLDEN, "parity.npz"))
  ecg, cine = inputs()
  assert checksum(ecg) == str(values["ecg_sha256"]) and checksum(cine) == str(values["cine_sha256"])
  return dict(values), ecg, cine


def state_dict(name):
  path = os.path.join(GOLDEN, name)
  return convert.weights(pth_reader.load(path), path)


def close(ours, theirs):
  diff = float(np.max(np.abs(np.asarray(ours) - theirs)))
  assert diff <= TOLERANCE, diff
  return diff


def test_release_ecg_encoder_and_projector_match_pytorch(golden):
  from cardionets_jax.stages import align
  values, ecg, _ = golden
  stage, config, params, report = convert.convert_state("release_ecg",
                                                        state_dict("release_ecg.pth"), HEADS)
  assert stage == "align" and not report["unused"] and not report["missing"]
  model = align.build_model(config)
  features = model.apply({"params": params}, ecg, None, method=model.ecg_features)
  close(features, values["release_ecg_features"])
  close(model.apply({"params": params}, features, method=model.embed_ecg),
        values["release_ecg_embedding"])
  # Our extension is the same network when every lead is present: a lead mask of ones.
  masked = model.apply({"params": params}, ecg, np.ones((2, 12), np.uint8), method=model.ecg_features)
  close(masked, values["release_ecg_features"])


def test_release_classifier_matches_pytorch_as_a_finetune_method(golden):
  import types
  from cardionets_jax.stages import finetune
  values, ecg, _ = golden
  stage, config, params, _ = convert.convert_state("release_cm", state_dict("release_cm.pth"), HEADS)
  assert stage == "finetune" and tuple(config.finetune.tasks) == ("disease",)
  meta = types.SimpleNamespace(phenotype_names=[], phenotype_units=[], label_names=["cardiomyopathy"],
                               phenotype_mean=[], phenotype_std=[])
  method = finetune.Method(config, "aligned", 1.0, 0, meta)   # its encoder from its own config
  features = method.model.apply({"params": params}, ecg, None, method=method.model.features)
  close(features, values["release_cm_features"])
  phen, logits = method.model.apply({"params": params}, features, method=method.model.heads)
  assert phen.shape == (2, 0)
  close(logits, values["release_cm_logits"])


def test_timm_cmr_encoder_matches_pytorch(golden):
  from cardionets_jax.stages import mae
  values, _, cine = golden
  stage, config, params, _ = convert.convert_state("timm_vit", state_dict("timm_vit.pth"), HEADS)
  assert stage == "mae" and (config.data.cmr_frames, config.data.cmr_size) == (50, 96)
  encoder = mae.build_encoder(config)
  assert encoder.pool == "cls_prenorm"       # the feature the release aligns to
  close(encoder.apply({"params": params["encoder"]}, cine), values["timm_cls_prenorm"])
  close(encoder.clone(pool="cls").apply({"params": params["encoder"]}, cine), values["timm_cls"])


def test_cli_writes_a_stage_checkpoint_and_reports_every_key(golden, tmp_path, capsys):
  from cardionets_jax.stages import align
  from cardionets_jax.train import mesh as mesh_lib
  import jax
  values, ecg, _ = golden
  pth = os.path.join(GOLDEN, "release_ecg.pth")
  assert convert.main(["--source=release_ecg", f"--pth={pth}", f"--out={tmp_path}",
                       f"--num-heads={HEADS}", "--report"]) == 0
  report = json.loads(capsys.readouterr().out)
  assert set(report) == {"mapped", "unused", "missing"}
  assert {m["key"] for m in report["mapped"]} == set(state_dict("release_ecg.pth"))
  assert report["unused"] == [] and report["missing"] == []
  qkv = next(m for m in report["mapped"] if m["key"] == "block1.attn.fn.to_qkv.weight")
  assert qkv["shape"] == [96, 32] and "ecg_encoder/transformer/block1/attn/key_kernel" in qkv["to"]
  # What tokenize and screening load: the align checkpoint's ECG side, rebuilt from its config.
  model, params, step, config = align.restore_ecg(str(tmp_path / "align" / "checkpoints"),
                                                  mesh_lib.data_mesh(jax.devices()[:1]))
  assert step == 0 and config.converted_from.source == "release_ecg"
  close(model.apply({"params": params}, ecg, None, method=model.ecg_features),
        values["release_ecg_features"])
  assert os.path.exists(tmp_path / "align" / "conversion.json")


def test_a_wrong_key_or_shape_is_named_and_nothing_is_written(tmp_path):
  good = state_dict("release_cm.pth")
  renamed = dict(good)
  renamed["block1.attn.fn.to_qkvx.weight"] = renamed.pop("block1.attn.fn.to_qkv.weight")
  with pytest.raises(mapping.ConvertError) as e:
    convert.convert_state("release_cm", renamed, HEADS)
  assert "missing key block1.attn.fn.to_qkv.weight" in str(e.value)
  assert "unexpected key block1.attn.fn.to_qkvx.weight" in str(e.value)

  reshaped = dict(good)
  reshaped["block0.ff.fn.net.3.weight"] = reshaped["block0.ff.fn.net.3.weight"][:, :-1]
  with pytest.raises(mapping.ConvertError, match=r"block0\.ff\.fn\.net\.3\.weight has shape "
                                                 r"\(32, 63\).*fc2/kernel needs \(64, 32\)"):
    convert.convert_state("release_cm", reshaped, HEADS)

  with pytest.raises(mapping.ConvertError, match="not an ST-MEM encoder state_dict"):
    convert.convert_state("release_ecg", state_dict("timm_vit.pth"))
  with pytest.raises(mapping.ConvertError, match="1 output: the MIMIC classifier"):
    convert.convert_state("release_ecg", {k: v for k, v in good.items()})
  out = tmp_path / "out"
  assert convert.main(["--source=timm_vit", f"--pth={os.path.join(GOLDEN, 'release_cm.pth')}",
                       f"--out={out}"]) == 2
  assert not out.exists()


def test_stmem_source_drops_a_classifier_head_and_says_why():
  _, _, params, report = convert.convert_state("stmem", state_dict("release_cm.pth"), HEADS)
  assert set(params) == {"encoder"}
  assert [(u["key"], u["reason"] != "unexpected") for u in report["unused"]] == [
      ("head.bias", True), ("head.weight", True)]


def test_base_size_stmem_layout_maps_every_key():
  # The key/shape manifest of ST-MEM ViT-B/75 with the release's classifier head, written by the
  # golden script at --size=base. Zero arrays of those shapes: only the layout is under test.
  with open(os.path.join(GOLDEN, "stmem_base_keys.json")) as f:
    shapes = json.load(f)
  assert len(shapes) == 2 * 3 + 2 + 12 + 12 * 12 + 2 + 2   # patch, pos+sep, leads, blocks, norm, head
  zeros = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  stage, config, _, report = convert.convert_state("release_cm", zeros)
  assert {m["key"] for m in report["mapped"]} == set(shapes)
  assert report["unused"] == [] and report["missing"] == []
  m = config.model
  assert (m.width, m.depth, m.num_heads, m.mlp_dim, m.patch_size, m.num_samples) == (
      768, 12, 12, 3072, 75, 2250)
