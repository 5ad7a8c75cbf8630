"""Writes the PyTorch side of the generator parity tests (run by hand; CI needs no torch).

  pip install torch timm        # a CPU wheel is enough
  python tests/golden/make_generator_golden.py --out tests/golden                # reduced width
  python tests/golden/make_generator_golden.py --out /tmp/base --size base       # the release's

It builds, in float32 and eval mode, modules with the release's state_dict names and forwards,
written from reading the release (Reducio's `VAE3d` with `vae_kl_ft2_fs8_z16`; LTH14/mar's `MAR`
with the ECG condition, `DiffLoss`' `SimpleMLPAdaLN` and the respaced cosine diffusion), fills
them with `generator_weights` (seeded numpy arrays) and writes the key/shape manifests
(`release_{vae,mar}_keys_<size>.json`) and the outputs (`generator_<size>.npz`):

  VAE: the posterior moments (after quant_conv) of seeded cines, the layer-normed latent of the
       posterior mean, its decoding; the discriminator's logits in training mode (BatchNorm on
       the batch's statistics) on seeded (8, 48, 48) cines;
  MAR: the condition (ecg_emb), the decoder's per-token conditions z for seeded known tokens,
       the diffusion head's (noise, variance) output at three timesteps, the guided (cfg 3) noise,
       and p(x_{t-1} | x_t)'s mean and log-variance on the 100-step respaced schedule.

The attention of the VAE's middle block is the plain softmax xformers computes; timm's `Block`
is used as it is.
"""

import argparse
import functools
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

import generator_weights   # beside this script

SIZES = {
    "reduced": dict(vae=dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z=4, heads=8,
                             frames=4, size=16, disc_ch=8, disc_layers=3),
                    mar=dict(width=32, depth=2, heads=2, buffer=4, seq_len=12, token_dim=16,
                             embed_dim=8, head_width=48, head_depth=2)),
    "base": dict(vae=dict(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z=16, heads=8,
                          frames=4, size=16, disc_ch=64, disc_layers=3),
                 mar=dict(width=768, depth=12, heads=12, buffer=64, seq_len=180, token_dim=320,
                          embed_dim=256, head_width=1024, head_depth=3)),
}
STEPS = (0, 37, 99)   # respaced timestep indices of the head checks


# --- the 3D-VAE ----------------------------------------------------------------------------


def norm(c):
  return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
  def __init__(self, c_in, c_out):
    super().__init__()
    self.norm1, self.conv1 = norm(c_in), nn.Conv3d(c_in, c_out, 3, 1, 1)
    self.norm2, self.conv2 = norm(c_out), nn.Conv3d(c_out, c_out, 3, 1, 1)
    if c_in != c_out:
      self.nin_shortcut = nn.Conv3d(c_in, c_out, 1)

  def forward(self, x):
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(F.silu(self.norm2(h)))
    return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
  def __init__(self, c, heads):
    super().__init__()
    self.heads = heads
    self.norm = norm(c)
    self.q, self.k, self.v, self.proj_out = (nn.Conv3d(c, c, 1) for _ in range(4))

  def forward(self, x):
    b, c, t, h, w = x.shape
    y = self.norm(x)
    split = lambda m: m(y).reshape(b, self.heads, c // self.heads, t * h * w).transpose(2, 3)
    q, k, v = split(self.q), split(self.k), split(self.v)
    a = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(c // self.heads), dim=-1) @ v
    return x + self.proj_out(a.transpose(2, 3).reshape(b, c, t, h, w))


class Downsample(nn.Module):
  def __init__(self, c, temporal):
    super().__init__()
    self.padding = (0, 1, 0, 1, 0, 1) if temporal else (0, 1, 0, 1, 0, 0)
    self.conv = nn.Conv3d(c, c, (3, 3, 3) if temporal else (1, 3, 3), (2, 2, 2) if temporal else (1, 2, 2))

  def forward(self, x):
    return self.conv(F.pad(x, self.padding))


class Upsample(nn.Module):
  def __init__(self, c, temporal):
    super().__init__()
    self.scale = (2.0, 2.0, 2.0) if temporal else (1.0, 2.0, 2.0)
    self.conv = nn.Conv3d(c, c, 3, 1, 1)

  def forward(self, x):
    return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


def middle(c, heads):
  m = nn.Module()
  m.block_1, m.attn_1, m.block_2 = ResnetBlock(c, c), AttnBlock(c, heads), ResnetBlock(c, c)
  return m


class Encoder(nn.Module):
  """Time halved at the last down-sampling (f_t = 1), the others spatial only."""

  def __init__(self, ch, ch_mult, num_res_blocks, z, heads):
    super().__init__()
    self.conv_in = nn.Conv3d(1, ch, 3, 1, 1)
    self.down, c = nn.ModuleList(), ch
    for level, mult in enumerate(ch_mult):
      down = nn.Module()
      down.block = nn.ModuleList()
      for _ in range(num_res_blocks):
        down.block.append(ResnetBlock(c, ch * mult))
        c = ch * mult
      if level < len(ch_mult) - 1:
        down.downsample = Downsample(c, temporal=level == len(ch_mult) - 2)
      self.down.append(down)
    self.mid = middle(c, heads)
    self.norm_out, self.conv_out = norm(c), nn.Conv3d(c, 2 * z, 3, 1, 1)

  def forward(self, x):
    h = self.conv_in(x)
    for down in self.down:
      for block in down.block:
        h = block(h)
      if hasattr(down, "downsample"):
        h = down.downsample(h)
    h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
    return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
  def __init__(self, ch, ch_mult, num_res_blocks, z, heads):
    super().__init__()
    c = ch * ch_mult[-1]
    self.conv_in = nn.Conv3d(z, c, 3, 1, 1)
    self.mid = middle(c, heads)
    ups = []
    for level in reversed(range(len(ch_mult))):
      up = nn.Module()
      up.block_1, up.block_2 = nn.ModuleList(), nn.ModuleList()
      for _ in range(num_res_blocks):
        up.block_1.append(ResnetBlock(c, ch * ch_mult[level]))
        c = ch * ch_mult[level]
      for _ in range(num_res_blocks):
        up.block_2.append(ResnetBlock(c, c))
      if level > 0:
        up.upsample = Upsample(c, temporal=level == len(ch_mult) - 1)
      ups.insert(0, up)
    self.up = nn.ModuleList(ups)
    self.norm_out, self.conv_out = norm(c), nn.Conv3d(c, 1, 3, 1, 1)

  def forward(self, z):
    h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
    for up in reversed(self.up):
      for block in list(up.block_1) + list(up.block_2):
        h = block(h)
      if hasattr(up, "upsample"):
        h = up.upsample(h)
    return self.conv_out(F.silu(self.norm_out(h)))


class Discriminator(nn.Module):
  def __init__(self, ndf, layers):
    super().__init__()
    self.main = discriminator_layers(ndf, layers)

  def forward(self, x):
    return self.main(x)


def discriminator_layers(ndf, layers):
  """The release's NLayerDiscriminator3D (no blur pool, BatchNorm, LeakyReLU 0.2)."""
  seq, mult = [nn.Conv3d(1, ndf, 4, 2, 1), nn.LeakyReLU(0.2)], 1
  for n in range(1, layers):
    prev, mult = mult, min(2 ** n, 8)
    kernel = (3, 4, 4) if n == layers - 1 else 4
    seq += [nn.Conv3d(ndf * prev, ndf * mult, kernel, 2, 1, bias=False),
            nn.BatchNorm3d(ndf * mult), nn.LeakyReLU(0.2)]
  prev, mult = mult, min(2 ** layers, 8)
  seq += [nn.Conv3d(ndf * prev, ndf * mult, (1, 4, 4), 1, (0, 1, 1), bias=False),
          nn.BatchNorm3d(ndf * mult), nn.LeakyReLU(0.2),
          nn.Conv3d(ndf * mult, 1, (1, 4, 4), 1, (0, 1, 1))]
  return nn.Sequential(*seq)


class Loss(nn.Module):
  """The weights of the release's LPIPSWithDiscriminator that its checkpoint keeps (LPIPS off)."""
  def __init__(self, ndf, layers):
    super().__init__()
    self.logvar = nn.Parameter(torch.zeros(()), requires_grad=False)
    self.discriminator = Discriminator(ndf, layers)


class ReleaseVAE(nn.Module):
  def __init__(self, ch, ch_mult, num_res_blocks, z, heads, disc_ch, disc_layers, **_):
    super().__init__()
    self.encoder_3d = Encoder(ch, ch_mult, num_res_blocks, z, heads)
    self.decoder = Decoder(ch, ch_mult, num_res_blocks, z, heads)
    self.quant_conv, self.post_quant_conv = nn.Conv3d(2 * z, 2 * z, 1), nn.Conv3d(z, z, 1)
    self.loss = Loss(disc_ch, disc_layers)


def vae_outputs(model, cines):
  x = torch.from_numpy(cines.astype(np.float32) / 127.5 - 1.0)[:, None]
  moments = model.quant_conv(model.encoder_3d(x))
  mean = torch.chunk(moments, 2, dim=1)[0]
  latent = F.layer_norm(mean, mean.shape[1:])
  decoded = model.decoder(model.post_quant_conv(latent))[:, 0]
  # channels last, as ours: (B, F', H', W', C) and (B, F, H, W)
  # The discriminator as it runs in training (BatchNorm on batch statistics), on larger cines.
  model.loss.discriminator.train()
  disc_in = torch.from_numpy(generator_weights.vae_inputs(8, 48, seed=3).astype(np.float32)
                             / 127.5 - 1.0)[:, None]
  logits = model.loss.discriminator(disc_in)[:, 0]
  return dict(vae_moments=moments.permute(0, 2, 3, 4, 1), vae_latent=latent.permute(0, 2, 3, 4, 1),
              vae_decoded=decoded, vae_disc_logits=logits)


# --- MAR + the diffusion head --------------------------------------------------------------


class TimestepEmbedder(nn.Module):
  def __init__(self, width, freq=256):
    super().__init__()
    self.freq = freq
    self.mlp = nn.Sequential(nn.Linear(freq, width), nn.SiLU(), nn.Linear(width, width))

  def forward(self, t):
    half = self.freq // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class ResBlock(nn.Module):
  def __init__(self, width):
    super().__init__()
    self.in_ln = nn.LayerNorm(width, eps=1e-6)
    self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

  def forward(self, x, y):
    shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
    return x + gate * self.mlp(self.in_ln(x) * (1 + scale) + shift)


class FinalLayer(nn.Module):
  def __init__(self, width, out):
    super().__init__()
    self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
    self.linear = nn.Linear(width, out)
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

  def forward(self, x, y):
    shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
    return self.linear(self.norm_final(x) * (1 + scale) + shift)


class SimpleMLPAdaLN(nn.Module):
  def __init__(self, token_dim, width, cond_width, depth):
    super().__init__()
    self.time_embed = TimestepEmbedder(width)
    self.cond_embed = nn.Linear(cond_width, width)
    self.input_proj = nn.Linear(token_dim, width)
    self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
    self.final_layer = FinalLayer(width, 2 * token_dim)

  def forward(self, x, t, c):
    x, y = self.input_proj(x), self.time_embed(t) + self.cond_embed(c)
    for block in self.res_blocks:
      x = block(x, y)
    return self.final_layer(x, y)


class ReleaseMAR(nn.Module):
  def __init__(self, width, depth, heads, buffer, seq_len, token_dim, embed_dim, head_width,
               head_depth):
    super().__init__()
    self.buffer = buffer
    block = lambda: Block(width, heads, 4.0, qkv_bias=True,
                          norm_layer=functools.partial(nn.LayerNorm, eps=1e-6), proj_drop=0.1,
                          attn_drop=0.1)
    self.fake_latent = nn.Parameter(torch.zeros(1, width))
    self.fake_rep_latent = nn.Parameter(torch.zeros(1, width))
    self.ecg_emb = nn.Sequential(nn.Linear(embed_dim, width), nn.Linear(width, width))
    self.rep_embedder = nn.Linear(width, width)
    self.z_proj = nn.Linear(token_dim, width)
    self.z_proj_ln = nn.LayerNorm(width, eps=1e-6)
    self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, buffer + seq_len, width))
    self.encoder_blocks = nn.ModuleList(block() for _ in range(depth))
    self.encoder_norm = nn.LayerNorm(width, eps=1e-6)
    self.decoder_embed = nn.Linear(width, width)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
    self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, buffer + seq_len, width))
    self.decoder_blocks = nn.ModuleList(block() for _ in range(depth))
    self.decoder_norm = nn.LayerNorm(width, eps=1e-6)
    self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, seq_len, width))
    self.decoder_pred = nn.Linear(width, token_dim)
    self.diffloss = nn.Module()
    self.diffloss.net = SimpleMLPAdaLN(token_dim, head_width, width, head_depth)

  def conditions(self, tokens, embedding, known):
    """forward_mae_encoder + forward_mae_decoder with the unknown tokens masked: (cond, z); the
    null condition (fake_latent) when `embedding` is None."""
    b, s, _ = tokens.shape
    cond = self.fake_latent.expand(b, -1) if embedding is None else self.ecg_emb(embedding)
    keep = torch.zeros(b, self.buffer + s, dtype=torch.bool)
    keep[:, :self.buffer] = True
    keep[torch.arange(b)[:, None], known + self.buffer] = True
    x = torch.cat([torch.zeros(b, self.buffer, self.z_proj.out_features), self.z_proj(tokens)], 1)
    x[:, :self.buffer] = cond[:, None]
    x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
    x = x[keep].reshape(b, -1, x.shape[-1])
    for blk in self.encoder_blocks:
      x = blk(x)
    x = self.decoder_embed(self.encoder_norm(x))
    full = self.mask_token.repeat(b, self.buffer + s, 1)
    full[keep] = x.reshape(-1, x.shape[-1])
    x = full + self.decoder_pos_embed_learned
    for blk in self.decoder_blocks:
      x = blk(x)
    return cond, self.decoder_norm(x)[:, self.buffer:] + self.diffusion_pos_embed_learned


def respaced_tables(num_steps=100, train_steps=1000):
  """improved-DDPM's cosine betas, respaced as space_timesteps(1000, "100"), and the
  p_mean_variance tables, in float64."""
  abar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
  betas = np.array([min(1 - abar((i + 1) / train_steps) / abar(i / train_steps), 0.999)
                    for i in range(train_steps)])
  stride, taken, cur = (train_steps - 1) / (num_steps - 1), set(), 0.0
  for _ in range(num_steps):
    taken.add(round(cur))
    cur += stride
  ac_all, last, new_betas, timesteps = np.cumprod(1 - betas), 1.0, [], []
  for i, ac in enumerate(ac_all):
    if i in taken:
      new_betas.append(1 - ac / last)
      last = ac
      timesteps.append(i)
  b = np.array(new_betas)
  ac = np.cumprod(1 - b)
  prev = np.append(1.0, ac[:-1])
  post_var = b * (1 - prev) / (1 - ac)
  return dict(timesteps=np.array(timesteps), log_betas=np.log(b),
              post_logvar=np.log(np.append(post_var[1], post_var[1:])),
              recip=np.sqrt(1 / ac), recipm1=np.sqrt(1 / ac - 1),
              coef1=b * np.sqrt(prev) / (1 - ac), coef2=(1 - prev) * np.sqrt(1 - b) / (1 - ac))


def mar_outputs(model, tokens, embedding, known, x_t):
  cond, z = model.conditions(torch.from_numpy(tokens), torch.from_numpy(embedding),
                             torch.from_numpy(known).long())
  out = dict(mar_cond=cond, mar_z=z)
  # The head on one predicted token per example: the first unknown position.
  first_unknown = [min(set(range(tokens.shape[1])) - set(k.tolist())) for k in known]
  zc = z[torch.arange(len(tokens)), first_unknown]
  tables = respaced_tables()
  x = torch.from_numpy(x_t)
  d = x.shape[-1]
  for i in STEPS:
    t = torch.full((len(x),), int(tables["timesteps"][i]))
    head = model.diffloss.net(x, t, zc)
    eps, v = head[:, :d], head[:, d:]
    frac = (v + 1) / 2
    f = lambda name: torch.tensor(np.float32(tables[name][i]))
    log_var = frac * f("log_betas") + (1 - frac) * f("post_logvar")
    x0 = f("recip") * x - f("recipm1") * eps
    out.update({f"mar_head_{i}": head, f"mar_mean_{i}": f("coef1") * x0 + f("coef2") * x,
                f"mar_logvar_{i}": log_var})
  # Guidance as forward_with_cfg: the conditional rows' x twice, eps_null + 3 (eps_c - eps_null).
  t = torch.full((2 * len(x),), int(tables["timesteps"][STEPS[1]]))
  _, z_uncond = model.conditions(torch.from_numpy(tokens), None, torch.from_numpy(known).long())
  zu = z_uncond[torch.arange(len(tokens)), first_unknown]
  head = model.diffloss.net(torch.cat([x, x]), t, torch.cat([zc, zu]))
  eps_c, eps_u = head[:, :d].chunk(2)
  out["mar_cfg_eps"] = eps_u + 3.0 * (eps_c - eps_u)
  out["mar_first_unknown"] = torch.tensor(first_unknown)
  return out


def fill(model, seed=0):
  """The module's weights from generator_weights; returns its {key: shape} manifest."""
  manifest = {k: list(v.shape) for k, v in model.state_dict().items()}
  model.load_state_dict({k: torch.from_numpy(w) for k, w in
                         generator_weights.state_dict(manifest, seed).items()})
  return manifest


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--size", default="reduced", choices=sorted(SIZES))
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  torch.manual_seed(0)
  sizes = SIZES[args.size]
  vae, mar = ReleaseVAE(**sizes["vae"]).eval(), ReleaseMAR(**sizes["mar"]).eval()
  manifests = dict(vae=fill(vae), mar=fill(mar))
  v, m = sizes["vae"], sizes["mar"]
  with torch.no_grad():
    out = vae_outputs(vae, generator_weights.vae_inputs(v["frames"], v["size"]))
    out.update(mar_outputs(mar, *generator_weights.mar_inputs(m["seq_len"], m["token_dim"],
                                                              m["embed_dim"])))
  for name, manifest in manifests.items():
    with open(os.path.join(args.out, f"release_{name}_keys_{args.size}.json"), "w") as f:
      json.dump(dict(sizes=sizes[name], keys=manifest), f, indent=0)
  np.savez_compressed(os.path.join(args.out, f"generator_{args.size}.npz"),
                      **{k: np.asarray(t, np.float32) for k, t in out.items()})
  print(f"wrote {args.out}: " + ", ".join(f"{k} {tuple(t.shape)}" for k, t in out.items()))


if __name__ == "__main__":
  main()
