"""The release's 3D-VAE and MAR, converted, against PyTorch forwards on the same weights.

The PyTorch side ran by hand (`golden/make_generator_golden.py`, modules with the release's
state_dict names and forwards); its weights are seeded numpy arrays (`golden/generator_weights`),
rebuilt here from the saved key/shape manifest, so only the manifest and the outputs are
committed. `PARITY_GOLDEN=DIR PARITY_SIZE=base` runs the same checks on the base-size goldens
the script writes with `--size=base` (the release's sizes; about a minute on 2 cores).
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardionets_jax.convert import __main__ as convert
from cardionets_jax.convert import mapping
from cardionets_jax.models import diffusion
from cardionets_jax.models import mar as mar_lib
from cardionets_jax.models import vae3d
from cardionets_jax.stages import context as context_lib
from cardionets_jax.stages import vae as vae_stage

GOLDEN = os.environ.get("PARITY_GOLDEN", os.path.join(os.path.dirname(__file__), "golden"))
SIZE = os.environ.get("PARITY_SIZE", "reduced")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "golden"))
import generator_weights  # noqa: E402

TOLERANCE = 1e-4


def golden(name):
  with open(os.path.join(GOLDEN, f"release_{name}_keys_{SIZE}.json")) as f:
    manifest = json.load(f)
  return manifest["sizes"], generator_weights.state_dict(manifest["keys"])


@pytest.fixture(scope="module")
def outputs():
  return dict(np.load(os.path.join(GOLDEN, f"generator_{SIZE}.npz")))


def close(got, want, name, relative=False):
  """Max abs difference <= 1e-4; `relative`: of the values' magnitude (the posterior mean near
  t = T is x_t / sqrt(alpha-bar), ~1e3 here, beyond float32's absolute 1e-4)."""
  got = np.asarray(got)
  assert got.shape == want.shape, name
  err = float(np.max(np.abs(got - want)))
  bound = TOLERANCE * (max(1.0, float(np.max(np.abs(want)))) if relative else 1.0)
  print(f"{name}: max abs difference {err:.2e}")
  assert err <= bound, f"{name}: max abs difference {err:.2e} (bound {bound:.2e})"
  return err


def test_release_vae_encodes_normalises_and_decodes_as_pytorch(outputs):
  sizes, state_dict = golden("vae")
  _, config, params_all, report = convert.convert_state("release_vae", state_dict,
                                                        num_heads=sizes["heads"])
  assert not report["missing"] and not report["errors"]
  vae = vae_stage.build_vae(config)
  params = jax.tree.map(jnp.asarray, params_all["vae"])
  cines = jnp.asarray(generator_weights.vae_inputs(sizes["frames"], sizes["size"]))
  posterior = jax.jit(lambda p, c: vae.apply({"params": p}, c, method=vae.encode))(params, cines)
  moments = outputs["vae_moments"]
  z = moments.shape[-1] // 2
  close(posterior.mean, moments[..., :z], "posterior mean")
  close(posterior.logvar, moments[..., z:], "posterior logvar")
  latent = vae3d.latent_layer_norm(posterior.mean)
  close(latent, outputs["vae_latent"], "layer-normed latent")
  decoded = jax.jit(lambda p, z: vae.apply({"params": p}, z, method=vae.decode))(
      params, jnp.asarray(outputs["vae_latent"]))
  close(decoded, outputs["vae_decoded"], "decoded")
  # The discriminator, converted with it, as it runs in training (batch statistics).
  assert (config.vae.disc_channels, config.vae.disc_layers) == (sizes["disc_ch"], sizes["disc_layers"])
  disc = vae_stage.build_discriminator(config)
  disc_in = jnp.asarray(generator_weights.vae_inputs(8, 48, seed=3))
  logits = jax.jit(lambda p, c: disc.apply({"params": p}, c))(
      jax.tree.map(jnp.asarray, params_all["disc"]), disc_in)
  close(logits, outputs["vae_disc_logits"], "discriminator logits")


def _mar(state_dict, sizes):
  _, config, params, report = convert.convert_state("release_mar", state_dict,
                                                    num_heads=sizes["heads"])
  assert not report["missing"] and not report["errors"]
  m = config.model
  model = mar_lib.MAR(seq_len=sizes["seq_len"], token_dim=sizes["token_dim"], width=m.width,
                      depth=m.depth, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
                      decoder_width=m.decoder_width, decoder_depth=m.decoder_depth,
                      decoder_heads=m.decoder_heads, decoder_mlp_dim=m.decoder_mlp_dim,
                      buffer_size=m.buffer_size, head_width=m.head_width, head_depth=m.head_depth,
                      cond_activation=m.cond_activation)
  return model, {"params": jax.tree.map(jnp.asarray, params)}


def test_release_mar_condition_path_and_one_denoising_step_match_pytorch(outputs):
  sizes, state_dict = golden("mar")
  model, variables = _mar(state_dict, sizes)
  tokens, embedding, known, x_t = (jnp.asarray(a) for a in generator_weights.mar_inputs(
      sizes["seq_len"], sizes["token_dim"], sizes["embed_dim"]))
  b = tokens.shape[0]
  keep, valid = jnp.ones((b,), bool), jnp.ones(known.shape, bool)
  conditions = jax.jit(model.apply)    # jitted: eager op-by-op dispatch is the slower path here
  denoise = jax.jit(lambda v, x, t, z: model.apply(v, x, t, z, method=mar_lib.MAR.denoise))
  close(model.apply(variables, embedding, keep, method=mar_lib.MAR.condition), outputs["mar_cond"],
        "condition")
  z = conditions(variables, tokens, embedding, keep, known, valid)
  close(z, outputs["mar_z"], "decoder conditions z")
  rows = outputs["mar_first_unknown"].astype(int)
  zc = z[jnp.arange(b), rows]
  sched = diffusion.make_schedule(1000, 100)
  for i in (0, 37, 99):
    idx = jnp.full((b,), i)
    head = denoise(variables, x_t, sched.timesteps[idx], zc)
    close(head, outputs[f"mar_head_{i}"], f"head at step {i}")
    eps, var_values = jnp.split(head, 2, axis=-1)
    mean, log_var = diffusion.p_mean_variance(sched, eps, var_values, x_t, idx)
    close(mean, outputs[f"mar_mean_{i}"], f"p mean at step {i}", relative=True)
    close(log_var, outputs[f"mar_logvar_{i}"], f"p log-variance at step {i}")
  # Guidance: the null condition's pass on the same x, eps_null + 3 (eps_cond - eps_null).
  z_null = conditions(variables, tokens, embedding, jnp.zeros((b,), bool), known, valid)
  idx = jnp.full((2 * b,), 37)
  head = denoise(variables, jnp.concatenate([x_t, x_t]), sched.timesteps[idx],
                 jnp.concatenate([zc, z_null[jnp.arange(b), rows]]))
  eps_c, eps_u = jnp.split(jnp.split(head, 2, axis=-1)[0], 2)
  close(eps_u + 3.0 * (eps_c - eps_u), outputs["mar_cfg_eps"], "guided noise")


@pytest.mark.parametrize("name,source", [("vae", "release_vae"), ("mar", "release_mar")])
def test_every_key_is_mapped_and_a_wrong_file_is_refused_by_key(name, source):
  sizes, state_dict = golden(name)
  _, _, _, report = convert.convert_state(source, state_dict, num_heads=sizes["heads"])
  assert len(report["mapped"]) + len(report["unused"]) == len(state_dict)
  assert all(u["reason"] != "unexpected" for u in report["unused"])
  first = sorted(state_dict)[0]
  with pytest.raises(mapping.ConvertError, match="no .*" if source == "release_mar" else "."):
    convert.convert_state("release_vae" if source == "release_mar" else "release_mar", state_dict)
  broken = dict(state_dict, **{first: state_dict[first][..., :1]})
  with pytest.raises(mapping.ConvertError, match=first.replace(".", r"\.")):
    convert.convert_state(source, broken, num_heads=sizes["heads"])
  extra = dict(state_dict, **{"extra.weight": np.zeros((2, 2), np.float32)})
  with pytest.raises(mapping.ConvertError, match=r"extra\.weight"):
    convert.convert_state(source, extra, num_heads=sizes["heads"])


@pytest.mark.parametrize("name,source,held", [
    ("vae", "release_vae", dict(vae=277_734_097, disc=4_208_449)),
    ("mar", "release_mar", 193_187_456)])
def test_base_size_layouts_map_every_key(name, source, held):
  # The key/shape manifests of the release's sizes, as the golden script writes them with
  # --size=base. Zero-stride arrays of those shapes: only the layout is under test.
  with open(os.path.join(os.path.dirname(__file__), "golden", f"release_{name}_keys_base.json")) as f:
    manifest = json.load(f)
  state_dict = {k: np.broadcast_to(np.float32(0), s) for k, s in manifest["keys"].items()}
  _, config, params, report = convert.convert_state(source, state_dict)
  assert not report["missing"] and not report["errors"]
  assert len(report["mapped"]) + len(report["unused"]) == len(state_dict)
  count = lambda tree: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))
  assert ({k: count(v) for k, v in params.items()} if isinstance(held, dict) else count(params)) == held
  if name == "vae":
    assert dict(config.model) == dict(context_lib.stage_config("vae", "base").model)
    assert dict(config.vae) == dict(context_lib.stage_config("vae", "base").vae)
