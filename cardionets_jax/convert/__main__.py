"""PyTorch checkpoints -> Orbax checkpoints laid out as our stages' outputs.

  python -m cardionets_jax.convert --source=stmem --pth=st_mem_vit_base_encoder.pth --out=DIR
  python -m cardionets_jax.convert --source=release_ecg --pth=aligned_ECG_encoder.pth --out=DIR
  python -m cardionets_jax.convert --source=release_cm --pth=trained_by_MIMIC_CM_best-auc.pth --out=DIR
  python -m cardionets_jax.convert --source=timm_vit --pth=vit_b16_50ch.pth --out=DIR [--report]
  python -m cardionets_jax.convert --source=release_vae --pth=checkpoint-0004.pth --out=DIR
  python -m cardionets_jax.convert --source=release_mar --pth=checkpoint-last.pth --out=DIR

DIR becomes a workdir holding one finished stage:

  stmem        DIR/stmem/checkpoints/0     params/encoder             -> init.stmem
  release_ecg  DIR/align/checkpoints/0     params/ecg_encoder, ecg_proj -> init.align
  release_cm   DIR/finetune/...            one method, label `cardiomyopathy` -> predict --workdir=DIR
  timm_vit     DIR/mae/checkpoints/0       params/encoder             -> init.mae
  release_vae  DIR/vae/checkpoints/0       params/vae                 -> init.vae (tokenize)
  release_mar  DIR/mar/checkpoints/0       params (its model_ema), artifacts/generator

The file is read without torch and without running its pickle (`pth_reader`). Every key must be
mapped or known to be dropped, every shape must fit: otherwise nothing is written and the error
names the key. `--report` prints {"mapped", "unused", "missing"} as one JSON object.
"""

import argparse
import hashlib
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cardionets_jax.convert import mapping
from cardionets_jax.convert import pth_reader
from cardionets_jax.convert import release_mar
from cardionets_jax.convert import release_vae
from cardionets_jax.convert import stmem as stmem_keys
from cardionets_jax.convert import timm_vit
from cardionets_jax.stages import context as context_lib

SOURCES = ("stmem", "release_ecg", "release_cm", "timm_vit", "release_vae", "release_mar")
ENTRIES = ("model", "state_dict", "model_ema")   # where torch.save'd dicts keep the weights
# The generator samples with its EMA weights, which the release saves beside the raw ones.
SOURCE_ENTRIES = {"release_mar": ("model_ema", "model", "state_dict")}
CM_METHOD = "release-mimic-cardiomyopathy"
CM_LABEL = "cardiomyopathy"


def weights(obj, path, entries=ENTRIES):
  """The state_dict of a loaded checkpoint: the object itself or its first entry in `entries`."""
  is_state = lambda d: isinstance(d, dict) and d and all(isinstance(v, np.ndarray)
                                                         for v in d.values())
  if is_state(obj):
    return obj
  for key in entries:
    if isinstance(obj, dict) and is_state(obj.get(key)):
      return obj[key]
  held = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
  raise mapping.ConvertError(f"{path}: no state_dict of tensors in the file or in its entries "
                             f"{entries} (it holds {held})")


def abstract_params(module, *args, method=None):
  """{path: ShapeDtypeStruct} of `module`'s params, nothing allocated."""
  tree = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args,
                                                     method=method)["params"]))
  return mapping.flatten(tree)


def _prefixed(prefix, flat):
  return {f"{prefix}/{k}": v for k, v in flat.items()}


def _ecg_config(stage, sizes):
  """configs/<stage>.py at base with the ECG encoder's sizes read from the file."""
  if sizes.pop("num_leads") != 12:
    raise mapping.ConvertError("the encoder has lead embeddings for other than 12 leads")
  config = context_lib.stage_config(stage, "base")
  if "model" not in config:
    config.model = context_lib.stage_config("align", "base").model
  config.model.update(sizes)
  return config


def _ecg_target(config, prefix):
  from cardionets_jax.stages import align
  encoder = align.build_ecg_encoder(config)
  return _prefixed(prefix, abstract_params(encoder, jnp.zeros((1, 12, config.model.num_samples))))


def _dense_target(path, width, features):
  return {f"{path}/kernel": jax.ShapeDtypeStruct((width, features), jnp.float32),
          f"{path}/bias": jax.ShapeDtypeStruct((features,), jnp.float32)}


def _vae_plan(state_dict, num_heads):
  from cardionets_jax.stages import vae
  s = release_vae.sizes(state_dict, num_heads)
  config = context_lib.stage_config("vae", "base")
  config.model.update(s)
  video = jnp.zeros((1,) + vae.cmr_shape(config), jnp.uint8)
  target = _prefixed("vae", abstract_params(vae.build_vae(config), video, False))
  rules = release_vae.rules(state_dict, s)
  disc = release_vae.disc_sizes(state_dict)
  if disc:   # the release's discriminator, so that VAE training can resume from the file
    config.vae.update(disc)   # base's loss preset is the release's: its discriminator style
    target.update(_prefixed("disc", abstract_params(vae.build_discriminator(config),
                                                    jnp.zeros((1, 8, 48, 48)))))
    rules += release_vae.disc_rules(disc["disc_layers"])
  else:
    config.vae.adv_weight = 0.0
  return "vae", config, target, rules, release_vae.KNOWN_UNUSED


def _mar_plan(state_dict, num_heads):
  from cardionets_jax.models import diffusion
  from cardionets_jax.models import mar as mar_lib
  s = release_mar.sizes(state_dict, num_heads)
  config = context_lib.stage_config("mar", "base")
  shapes = {k: s.pop(k) for k in ("seq_len", "token_dim", "embed_dim")}
  config.model.update(s)
  model = mar_lib.MAR(seq_len=shapes["seq_len"], token_dim=shapes["token_dim"], **s,
                      cond_activation=config.model.cond_activation,
                      inner_dropout=config.model.inner_dropout)
  mask, idx, valid = mar_lib.training_mask(jax.random.PRNGKey(0), 1, shapes["seq_len"])
  args = (jnp.zeros((1, shapes["seq_len"], shapes["token_dim"])), jnp.zeros((1, shapes["embed_dim"])),
          jnp.ones((1,), bool), mask, idx, valid, diffusion.make_schedule(10),
          jax.random.PRNGKey(0))
  target = abstract_params(model, *args, method=mar_lib.MAR.loss)
  return "mar", config, target, release_mar.rules(s), release_mar.KNOWN_UNUSED


def plan(source, state_dict, num_heads=None):
  """(stage, config, target {path: shape}, rules, known unused) for one source's state_dict."""
  if source == "release_vae":
    return _vae_plan(state_dict, num_heads)
  if source == "release_mar":
    return _mar_plan(state_dict, num_heads)
  if source == "timm_vit":
    from cardionets_jax.stages import mae
    s = timm_vit.sizes(state_dict, num_heads)
    config = context_lib.stage_config("mae", "base")
    config.data.update(cmr_frames=s.pop("frames"), cmr_size=s.pop("image_size"))
    config.model.update(s)
    config.model.pool = "cls_prenorm"   # a release encoder hands on what the release aligns to
    encoder = mae.build_encoder(config)
    video = jnp.zeros((1,) + mae.cmr_shape(config), jnp.uint8)
    encode = lambda m, v: m.encode(m.embed(v))   # every parameter, the final norm included
    target = _prefixed("encoder", abstract_params(encoder, video, method=encode))
    return ("mae", config, target, timm_vit.encoder_rules("encoder", s["depth"], s["num_heads"]),
            timm_vit.KNOWN_UNUSED)
  s = stmem_keys.sizes(state_dict, num_heads)
  tp = stmem_keys.torch_prefix(state_dict)
  stage, prefix, head = dict(stmem=("stmem", "encoder", None),
                             release_ecg=("align", "ecg_encoder", "ecg_proj"),
                             release_cm=("finetune", "encoder", "disease_head"))[source]
  config = _ecg_config(stage, dict(s))
  rules = stmem_keys.encoder_rules(prefix, s["depth"], s["num_heads"], tp=tp)
  target = _ecg_target(config, prefix)
  unused = [stmem_keys.PRETRAINING_DECODER, stmem_keys.PATCH_EMBEDDING_ALIAS] if tp else []
  if head is None:
    unused.append((r"head\.(weight|bias)", "a classifier head: ST-MEM's encoder hands on none"))
  else:
    if "head.weight" not in state_dict:
      raise mapping.ConvertError(f"no head.weight: not the release's {source} layout")
    features = int(state_dict["head.weight"].shape[0])
    rules += stmem_keys.head_rules(head)
    target.update(_dense_target(head, s["width"], features))
    if source == "release_ecg":
      if features == 1:
        raise mapping.ConvertError("head.weight has 1 output: the MIMIC classifier's layout "
                                   "(--source=release_cm), not the aligned encoder's projector")
      config.model.embed_dim = features
    elif features != 1:
      raise mapping.ConvertError(f"head.weight has {features} outputs: the MIMIC cardiomyopathy "
                                 "classifier has 1")
  if source == "release_cm":
    config.finetune.update(tasks=("disease",), inits=("aligned",))
  return stage, config, target, rules, unused


def convert_state(source, state_dict, num_heads=None, name="the state_dict"):
  """(stage, config, params tree, report) of a state_dict; ConvertError when it does not fit."""
  if source not in SOURCES:
    raise mapping.ConvertError(f"--source must be one of {SOURCES}, not {source!r}")
  stage, config, target, rules, unused = plan(source, state_dict, num_heads)
  flat, report = mapping.apply(state_dict, rules, target, unused)
  report.update(source=source, stage=stage)
  mapping.check(report, name)
  return stage, config, mapping.unflatten(flat), report


def convert(source, pth, out, num_heads=None):
  """Converts one file into the workdir `out`; returns the report. Raises ConvertError (nothing
  written) when the state_dict does not fit."""
  state_dict = weights(pth_reader.load(pth), pth, SOURCE_ENTRIES.get(source, ENTRIES))
  stage, config, params, report = convert_state(source, state_dict, num_heads, pth)
  report.update(pth=os.path.abspath(pth), sha256=_sha256(pth))
  config.converted_from = ml_collections.ConfigDict(dict(source=source, file=os.path.basename(pth),
                                                         sha256=report["sha256"]))
  write_stage(source, stage, config, params, out, report)
  return report


def _sha256(path):
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def write_stage(source, stage, config, params, out, report):
  """Writes `params` as the finished `stage` of the workdir `out`, laid out as a stage run leaves
  it (the checkpoint at step 0 holds params only; `config.converted_from` says where from)."""
  from cardionets_jax.train import checkpoint as ckpt_lib
  from cardionets_jax.workdir import Workdir, write_json
  workdir = Workdir(out)
  run = CM_METHOD if source == "release_cm" else None
  ckpt = ckpt_lib.Checkpointer(workdir.checkpoints(stage, run), async_save=False)
  try:
    ckpt.save(0, {"params": jax.tree.map(jnp.asarray, params)}, None, config)
    ckpt.wait()
  finally:
    ckpt.close()
  if source == "release_cm":
    workdir.write_artifact("finetune", "methods.json", {CM_METHOD: dict(
        init="aligned", mode="full", label_fraction=1.0, seed=0, best_step=0,
        checkpoint=f"{workdir.checkpoints(stage, run)}/0", thresholds={CM_LABEL: 0.5},
        heads=dict(label_names=[CM_LABEL], phenotype_names=[], phenotype_units=[]),
        preprocessing="release",
        note=("converted from the release's MIMIC-IV-ECG cardiomyopathy classifier "
              f"({os.path.basename(report['pth'])}): it predicts that one disease and no "
              "phenotypes (the release publishes no phenotype head); threshold 0.5 as the "
              "release reports"))})
  if source == "release_mar":
    _write_generator(workdir, config, params)
  write_json(os.path.join(workdir.stage_dir(stage), "conversion.json"), report)
  workdir.mark_finished(stage, config, converted_from=report["pth"], sha256=report["sha256"])


def _write_generator(workdir, config, params):
  """The sampling weights screening reads (`stages/mar.py::export_generator`'s layout); the
  channel statistics are the identity: the release models the decoder's own latent."""
  from cardionets_jax.stages import mar
  channels = mar.token_shapes(config)[0][-1]
  frozen = dict(latent_mean=np.zeros((channels,), np.float32),
                latent_std=np.ones((channels,), np.float32))
  mar.save_generator(workdir, jax.tree.map(jnp.asarray, params), frozen)


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m cardionets_jax.convert",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--source", required=True, choices=SOURCES)
  parser.add_argument("--pth", required=True, help="the PyTorch checkpoint (.pth, torch.save zip)")
  parser.add_argument("--out", required=True, help="workdir to write the converted stage into")
  parser.add_argument("--num-heads", type=int, default=None,
                      help="attention heads (weights do not say; default width / 64)")
  parser.add_argument("--report", action="store_true",
                      help="print {mapped, unused, missing} as one JSON object")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    report = convert(args.source, args.pth, args.out, args.num_heads)
  except (mapping.ConvertError, pth_reader.PthError) as e:
    report = getattr(e, "report", None)
    if args.report and report:
      print(json.dumps(report, indent=1))
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.report:
    print(json.dumps({k: report[k] for k in ("mapped", "unused", "missing")}, indent=1))
  print(f"Converted {args.pth} ({args.source}) into {os.path.abspath(args.out)} "
        f"({len(report['mapped'])} keys mapped, {len(report['unused'])} dropped)", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
