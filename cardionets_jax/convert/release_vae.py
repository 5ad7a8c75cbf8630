"""The release's 3D-VAE state_dict (`generation/checkpoint-0004.pth`, Reducio's `VAE3d` with the
`vae_kl_ft2_fs8_z16` config) -> `VAE3D`.

Key names (torch convs are (out, in, kt, kh, kw); ours (kt, kh, kw, in, out)):

  encoder_3d.conv_in                            -> encoder/conv_in
  encoder_3d.down.{l}.block.{i}.{norm1,conv1,norm2,conv2,nin_shortcut}
                                                -> encoder/down{l}_block{i}/{...,skip}
  encoder_3d.down.{l}.downsample.conv           -> encoder/down{l}_downsample/conv
  {encoder_3d,decoder}.mid.{block_1,attn_1,block_2}
                                                -> {encoder,decoder}/{mid_block1,mid_attention,mid_block2}
  {encoder_3d,decoder}.{norm_out,conv_out}      -> {encoder,decoder}/{norm_out,conv_out}
  quant_conv, post_quant_conv                   -> quant_conv, post_quant_conv
  decoder.conv_in                               -> decoder/conv_in
  decoder.up.{l}.block_1.{j}, block_2.{j}       -> decoder/up{l}_block{j}, up{l}_block{n + j}
  decoder.up.{l}.upsample.conv                  -> decoder/up{l}_upsample/conv
  loss.discriminator.main.{0, 3n - 1, 3L + 2}   -> disc/{conv0, conv{n}, conv_out} (n = 1..L)
  loss.discriminator.main.{3n}                  -> disc/norm{n} (BatchNorm weight, bias)
  loss.logvar, loss.perceptual_loss.*, BatchNorm running statistics: dropped, with reasons

The discriminator is nn.Sequential: conv, LeakyReLU, then (conv, BatchNorm, LeakyReLU) L times,
then the output conv, so its convs sit at indices 0, 2, 5, ..., 3L - 1 and 3L + 2.
"""

import re

from cardionets_jax.convert import mapping

HEADS = 8   # the release's mid attention (weights do not say)
DISCRIMINATOR = "loss.discriminator.main"
KNOWN_UNUSED = [
    (r"loss\.discriminator\.main\.\d+\.(running_mean|running_var|num_batches_tracked)",
     "BatchNorm running statistics: the discriminator only runs in training, where it normalises "
     "with batch statistics (models/discriminator.py::BatchStatNorm)"),
    (r"loss\.logvar", "the loss's fixed log-variance (0): not a model weight"),
    (r"loss\.perceptual_loss\..*", "LPIPS: a frozen VGG16 of the loss, not a model weight"),
]


def conv(key, path):
  return [mapping.to(f"{key}.weight", f"{path}/kernel", lambda w: w.transpose(2, 3, 4, 1, 0)),
          mapping.to(f"{key}.bias", f"{path}/bias")]


def res_block(key, path, state_dict):
  rules = (mapping.norm(f"{key}.norm1", f"{path}/norm1") + conv(f"{key}.conv1", f"{path}/conv1")
           + mapping.norm(f"{key}.norm2", f"{path}/norm2") + conv(f"{key}.conv2", f"{path}/conv2"))
  if f"{key}.nin_shortcut.weight" in state_dict:
    rules += conv(f"{key}.nin_shortcut", f"{path}/skip")
  return rules


def _mid(key, path, state_dict):
  rules = res_block(f"{key}.mid.block_1", f"{path}/mid_block1", state_dict)
  rules += mapping.norm(f"{key}.mid.attn_1.norm", f"{path}/mid_attention/norm")
  for name in ("q", "k", "v", "proj_out"):
    rules += conv(f"{key}.mid.attn_1.{name}", f"{path}/mid_attention/{name}")
  return rules + res_block(f"{key}.mid.block_2", f"{path}/mid_block2", state_dict)


def sizes(state_dict, num_heads=None):
  """VAE3D's sizes read from the state_dict's shapes (heads: the release's 8 unless given)."""
  need = ("encoder_3d.conv_in.weight", "decoder.conv_out.weight", "post_quant_conv.weight",
          "encoder_3d.down.0.block.0.conv1.weight")
  absent = [k for k in need if k not in state_dict]
  if absent:
    raise mapping.ConvertError(f"not the release's 3D-VAE state_dict: no {', '.join(absent)} "
                               f"(it holds {sorted(state_dict)[:6]} ...)")
  base = int(state_dict["encoder_3d.conv_in.weight"].shape[0])
  levels = mapping.count_indexed(state_dict, r"encoder_3d\.down\.(\d+)\.")
  mult = tuple(int(state_dict[f"encoder_3d.down.{l}.block.0.conv1.weight"].shape[0]) // base
               for l in range(levels))
  temporal = tuple(int(state_dict[f"encoder_3d.down.{l}.downsample.conv.weight"].shape[2]) == 3
                   for l in range(levels - 1))
  latent = int(state_dict["post_quant_conv.weight"].shape[0])
  shape = tuple(state_dict["post_quant_conv.weight"].shape)
  if shape[1] != latent:
    raise mapping.ConvertError(f"post_quant_conv.weight {shape}: embed_dim differs from "
                               "z_channels, which VAE3D does not model")
  decoder_blocks = (mapping.count_indexed(state_dict, r"decoder\.up\.0\.block_1\.(\d+)\.")
                    + mapping.count_indexed(state_dict, r"decoder\.up\.0\.block_2\.(\d+)\."))
  return dict(base_channels=base, channel_mult=mult,
              num_res_blocks=mapping.count_indexed(state_dict, r"encoder_3d\.down\.0\.block\.(\d+)\."),
              decoder_res_blocks=decoder_blocks, latent_channels=latent, temporal_down=temporal,
              mid_attention_heads=num_heads or HEADS, quant_convs=True, latent_norm="layer_norm")


def rules(state_dict, s, prefix="vae"):
  """Every rule from the release's state_dict to VAE3D params under `prefix`."""
  p, out = prefix, []
  out += conv("encoder_3d.conv_in", f"{p}/encoder/conv_in")
  for level in range(len(s["channel_mult"])):
    for i in range(s["num_res_blocks"]):
      out += res_block(f"encoder_3d.down.{level}.block.{i}", f"{p}/encoder/down{level}_block{i}",
                       state_dict)
    if level < len(s["channel_mult"]) - 1:
      out += conv(f"encoder_3d.down.{level}.downsample.conv",
                  f"{p}/encoder/down{level}_downsample/conv")
  out += _mid("encoder_3d", f"{p}/encoder", state_dict)
  out += mapping.norm("encoder_3d.norm_out", f"{p}/encoder/norm_out")
  out += conv("encoder_3d.conv_out", f"{p}/encoder/conv_out")
  out += conv("quant_conv", f"{p}/quant_conv") + conv("post_quant_conv", f"{p}/post_quant_conv")
  out += conv("decoder.conv_in", f"{p}/decoder/conv_in")
  out += _mid("decoder", f"{p}/decoder", state_dict)
  half = s["decoder_res_blocks"] // 2
  for level in range(len(s["channel_mult"])):
    for j in range(s["decoder_res_blocks"]):
      torch = f"decoder.up.{level}.block_{1 + j // half}.{j % half}"
      out += res_block(torch, f"{p}/decoder/up{level}_block{j}", state_dict)
    if level > 0:
      out += conv(f"decoder.up.{level}.upsample.conv", f"{p}/decoder/up{level}_upsample/conv")
  out += mapping.norm("decoder.norm_out", f"{p}/decoder/norm_out")
  return out + conv("decoder.conv_out", f"{p}/decoder/conv_out")


def disc_sizes(state_dict):
  """The discriminator's {disc_channels, disc_layers}, or {} when the file holds none."""
  if f"{DISCRIMINATOR}.0.weight" not in state_dict:
    return {}
  modules = mapping.count_indexed(state_dict, re.escape(DISCRIMINATOR) + r"\.(\d+)\.")
  return dict(disc_channels=int(state_dict[f"{DISCRIMINATOR}.0.weight"].shape[0]),
              disc_layers=modules // 3 - 1)


def disc_rules(layers, prefix="disc"):
  """The discriminator's convs and BatchNorm affines (`disc_sizes`' disc_layers = L)."""
  d = DISCRIMINATOR
  out = conv(f"{d}.0", f"{prefix}/conv0")
  for n in range(1, layers + 1):
    out.append(conv(f"{d}.{3 * n - 1}", f"{prefix}/conv{n}")[0])   # no bias before a norm
    out += mapping.norm(f"{d}.{3 * n}", f"{prefix}/norm{n}")
  return out + conv(f"{d}.{3 * layers + 2}", f"{prefix}/conv_out")
