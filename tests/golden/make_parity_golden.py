"""Writes the PyTorch side of the converter parity tests (run by hand; CI needs no torch).

  pip install torch timm        # a CPU wheel is enough
  python tests/golden/make_parity_golden.py --out tests/golden             # reduced width
  python tests/golden/make_parity_golden.py --out /tmp/base --size base    # ViT-B, 340 MB each

It builds, with random weights:
  * an ST-MEM ViT (`StMemViT` below: ST-MEM's `ST_MEM_ViT` state_dict names and forward, written
    from reading bakqui/ST-MEM) with a Linear head of 16 outputs (the release's aligned encoder +
    projector layout, `release_ecg.pth`) and of 1 output (the MIMIC classifier, `release_cm.pth`),
    each saved as {"model": state_dict} as the release saves them;
  * timm's VisionTransformer over 50 x 96 x 96 cines (`timm_vit.pth`, a plain state_dict);
and writes their outputs on seeded random inputs to `parity.npz`, and the base-size key/shape
manifest of the ST-MEM classifier to `stmem_base_keys.json` (with --size=base).

Inputs are drawn by `parity_inputs.inputs()` from numpy's PCG64 (the test draws the same ones and checks them
against the checksums saved here). ST-MEM z-scores each ECG in its data pipeline; our encoder
does it inside, so the PyTorch side is given the z-scored ECG.
"""

import argparse
import json
import os
from functools import partial

import numpy as np
import torch
from torch import nn

from parity_inputs import checksum, inputs   # beside this script

SIZES = {"reduced": dict(ecg=dict(width=32, depth=2, heads=2, mlp=64),
                         cmr=dict(width=16, depth=2, heads=2)),
         "base": dict(ecg=dict(width=768, depth=12, heads=12, mlp=3072),
                      cmr=dict(width=768, depth=12, heads=12))}
EMBED_DIM = 16          # the projector's outputs in release_ecg.pth (the release's is 256)


class Patches(nn.Module):
  """(B, L, T) -> (B, L, n, P); no parameters (ST-MEM's einops Rearrange)."""

  def __init__(self, patch_size):
    super().__init__()
    self.patch_size = patch_size

  def forward(self, x):
    b, leads, t = x.shape
    return x.reshape(b, leads, t // self.patch_size, self.patch_size)


class PreNorm(nn.Module):
  def __init__(self, dim, fn):
    super().__init__()
    self.norm, self.fn = nn.LayerNorm(dim), fn

  def forward(self, x):
    return self.fn(self.norm(x))


class Attention(nn.Module):
  def __init__(self, dim, heads, dim_head):
    super().__init__()
    self.heads, self.scale = heads, dim_head ** -0.5
    self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=True)
    self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.0))

  def forward(self, x):
    b, n, _ = x.shape
    q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, -1))
    attn = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
    return self.to_out((attn @ v).transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0),
                             nn.Linear(hidden, dim), nn.Dropout(0.0))

  def forward(self, x):
    return self.net(x)


class Block(nn.Module):
  def __init__(self, dim, hidden, heads, dim_head):
    super().__init__()
    self.attn = PreNorm(dim, Attention(dim, heads, dim_head))
    self.ff = PreNorm(dim, FeedForward(dim, hidden))

  def forward(self, x):
    x = self.attn(x) + x
    return self.ff(x) + x


class StMemViT(nn.Module):
  """ST-MEM's ViT: patch norms, SEP-framed leads, mean over patch tokens, then the norm."""

  def __init__(self, width, depth, heads, mlp, num_classes, seq_len=2250, patch_size=75, leads=12):
    super().__init__()
    n = seq_len // patch_size
    self.depth = depth
    self.to_patch_embedding = nn.Sequential(Patches(patch_size), nn.LayerNorm(patch_size),
                                            nn.Linear(patch_size, width), nn.LayerNorm(width))
    self.pos_embedding = nn.Parameter(torch.randn(1, n + 2, width))
    self.sep_embedding = nn.Parameter(torch.randn(width))
    self.lead_embeddings = nn.ParameterList(nn.Parameter(torch.randn(width)) for _ in range(leads))
    for i in range(depth):
      self.add_module(f"block{i}", Block(width, mlp, heads, width // heads))
    self.norm = nn.LayerNorm(width)
    self.head = nn.Linear(width, num_classes)

  def features(self, series):
    x = self.to_patch_embedding(series)
    b, leads, n, _ = x.shape
    x = x + self.pos_embedding[:, 1:n + 1].unsqueeze(1)
    sep = self.sep_embedding[None, None, None, :].expand(b, leads, 1, -1)
    x = torch.cat([sep + self.pos_embedding[:, :1].unsqueeze(1), x,
                   sep + self.pos_embedding[:, -1:].unsqueeze(1)], dim=2)
    x = x + torch.stack(list(self.lead_embeddings))[None, :, None, :]
    x = x.reshape(b, leads * (n + 2), -1)
    for i in range(self.depth):
      x = getattr(self, f"block{i}")(x)
    x = x.reshape(b, leads, n + 2, -1)[:, :, 1:-1]
    return self.norm(x.mean(dim=(1, 2)))

  def forward(self, series):
    return self.head(self.features(series))


def randomize(module, seed):
  """Every parameter random, LayerNorm scales around 1: nothing the conversion could get away
  with ignoring."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if isinstance(dict(module.named_modules()).get(name.rsplit(".", 1)[0]), nn.LayerNorm):
        p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
      else:
        p.copy_(noise * (0.5 / max(p.shape[-1], 1) ** 0.5 if p.ndim > 1 else 0.1))


def zscore(ecg):
  """ST-MEM's `standardize` over (leads, time): one mean and population std per example."""
  mean = ecg.mean(axis=(1, 2), keepdims=True)
  return (ecg - mean) / ecg.std(axis=(1, 2), keepdims=True)


def timm_cmr(width, depth, heads):
  from timm.models.vision_transformer import VisionTransformer
  return VisionTransformer(img_size=96, patch_size=16, in_chans=50, num_classes=0, embed_dim=width,
                           depth=depth, num_heads=heads, mlp_ratio=4.0, qkv_bias=True,
                           norm_layer=partial(nn.LayerNorm, eps=1e-6))


def cls_tokens(vit, video):
  """(CLS of the last block before the final norm (the release's feature), after it)."""
  x = vit.norm_pre(vit._pos_embed(vit.patch_embed(video)))
  x = vit.blocks(x)
  return x[:, 0], vit.norm(x)[:, 0]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--size", choices=sorted(SIZES), default="reduced")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  torch.set_default_dtype(torch.float32)
  sizes = SIZES[args.size]
  ecg, cine = inputs()
  out = dict(ecg_sha256=np.array(checksum(ecg)), cine_sha256=np.array(checksum(cine)))

  e = sizes["ecg"]
  encoder = StMemViT(e["width"], e["depth"], e["heads"], e["mlp"], num_classes=EMBED_DIM).eval()
  randomize(encoder, 1)
  classifier = StMemViT(e["width"], e["depth"], e["heads"], e["mlp"], num_classes=1).eval()
  randomize(classifier, 2)
  x = torch.from_numpy(zscore(ecg.astype(np.float64)).astype(np.float32))
  with torch.no_grad():
    out.update(release_ecg_features=encoder.features(x).numpy(), release_ecg_embedding=encoder(x).numpy(),
               release_cm_features=classifier.features(x).numpy(), release_cm_logits=classifier(x).numpy())
  torch.save({"model": encoder.state_dict(), "epoch": 0}, os.path.join(args.out, "release_ecg.pth"))
  torch.save({"model": classifier.state_dict(), "epoch": 0}, os.path.join(args.out, "release_cm.pth"))

  c = sizes["cmr"]
  vit = timm_cmr(c["width"], c["depth"], c["heads"]).eval()
  randomize(vit, 3)
  video = torch.from_numpy(cine.astype(np.float32) / 127.5 - 1.0)
  with torch.no_grad():
    prenorm, normed = cls_tokens(vit, video)
  out.update(timm_cls_prenorm=prenorm.numpy(), timm_cls=normed.numpy())
  torch.save(vit.state_dict(), os.path.join(args.out, "timm_vit.pth"))

  np.savez(os.path.join(args.out, "parity.npz"), **out)
  if args.size == "base":
    keys = {k: list(v.shape) for k, v in classifier.state_dict().items()}
    with open(os.path.join(args.out, "stmem_base_keys.json"), "w") as f:
      json.dump(keys, f, indent=0)
  print(f"wrote {args.out}: torch {torch.__version__}")


if __name__ == "__main__":
  main()
