"""ST-MEM's `ST_MEM_ViT` state_dict (bakqui/ST-MEM; the release's ECG encoder) -> `EcgEncoder`.

Key names (one encoder of width W, patch P, N patches per lead, L leads):

  to_patch_embedding.1.*        LayerNorm(P)          -> patch_norm_in
  to_patch_embedding.2.*        Linear(P, W)          -> patch_embed
  to_patch_embedding.3.*        LayerNorm(W)          -> patch_norm_out
  pos_embedding (1, N + 2, W)   SEP before, patches, SEP after -> pos_embed
  sep_embedding (W,)                                  -> sep_embed
  lead_embeddings.{0..L-1} (W,)                       -> lead_embed (L, W)
  block{i}.attn.norm.*          LayerNorm             -> transformer/block{i}/ln1
  block{i}.attn.fn.to_qkv.*     Linear(W, 3 W), fused -> attn/{query,key,value}_{kernel,bias}
  block{i}.attn.fn.to_out.0.*   Linear(W, W)          -> attn/out_{kernel,bias}
  block{i}.ff.norm.*            LayerNorm             -> transformer/block{i}/ln2
  block{i}.ff.fn.net.0.*, .3.*  Linear(W, M), Linear(M, W) -> mlp/fc1, mlp/fc2
  norm.*                        LayerNorm after the pooling -> ln_final
  head.*                        Linear(W, K): the release's projector (K = 256) or classifier (K = 1)
"""

import re

import numpy as np

from cardionets_jax.convert import mapping

HEAD_DIM = 64   # ST-MEM's dim_head: heads = width / 64 unless told otherwise

# What an ST-MEM pre-training checkpoint (models/st_mem.py) holds besides its encoder.
PRETRAINING_DECODER = (r"(to_decoder_embedding|mask_embedding|decoder_pos_embed|decoder_blocks|"
                       r"decoder_norm|decoder_head)(\..*)?",
                       "ST-MEM's pre-training decoder: not needed to align or fine-tune")
PATCH_EMBEDDING_ALIAS = (r"to_patch_embedding\..*",
                         "the pre-training model's alias of encoder.to_patch_embedding")


def torch_prefix(state_dict):
  """'encoder.' for an ST-MEM pre-training checkpoint (encoder and decoder), '' for an encoder's
  own state_dict."""
  return "encoder." if "encoder.pos_embedding" in state_dict else ""


def sizes(state_dict, num_heads=None):
  """The encoder's sizes, read from the shapes in its state_dict (heads: width / 64 unless
  given, as weights do not say)."""
  tp = torch_prefix(state_dict)
  need = [tp + k for k in ("pos_embedding", "to_patch_embedding.2.weight",
                           "block0.ff.fn.net.0.weight")]
  absent = [k for k in need if k not in state_dict]
  if absent:
    raise mapping.ConvertError(f"not an ST-MEM encoder state_dict: no {', '.join(absent)} "
                               f"(it holds {sorted(state_dict)[:6]} ...)")
  width, patch_size = state_dict[tp + "to_patch_embedding.2.weight"].shape
  depth = mapping.count_indexed(state_dict, re.escape(tp) + r"block(\d+)\.")
  leads = sum(1 for k in state_dict if re.fullmatch(re.escape(tp) + r"lead_embeddings\.\d+", k))
  heads = num_heads or max(width // HEAD_DIM, 1)
  return dict(width=int(width), depth=depth, num_heads=int(heads),
              mlp_dim=int(state_dict[tp + "block0.ff.fn.net.0.weight"].shape[0]),
              patch_size=int(patch_size),
              num_samples=int((state_dict[tp + "pos_embedding"].shape[1] - 2) * patch_size),
              num_leads=leads)


def encoder_rules(prefix, depth, num_heads, num_leads=12, tp=""):
  """Rules from an `ST_MEM_ViT` state_dict (its keys under `tp`, 'encoder.' in a pre-training
  checkpoint) to an EcgEncoder at our `prefix` (e.g. 'ecg_encoder')."""
  p = prefix
  rules = (mapping.norm(f"{tp}to_patch_embedding.1", f"{p}/patch_norm_in")
           + mapping.dense(f"{tp}to_patch_embedding.2", f"{p}/patch_embed")
           + mapping.norm(f"{tp}to_patch_embedding.3", f"{p}/patch_norm_out")
           + [mapping.to(f"{tp}pos_embedding", f"{p}/pos_embed"),
              mapping.to(f"{tp}sep_embedding", f"{p}/sep_embed"),
              mapping.Rule(tuple(f"{tp}lead_embeddings.{i}" for i in range(num_leads)),
                           lambda *rows: {f"{p}/lead_embed": np.stack(rows)})]
           + mapping.norm(f"{tp}norm", f"{p}/ln_final"))
  for i in range(depth):
    b = f"{tp}block{i}"
    rules += mapping.block_rules(f"{p}/transformer/block{i}", num_heads, ln1=f"{b}.attn.norm",
                                 qkv=f"{b}.attn.fn.to_qkv", out=f"{b}.attn.fn.to_out.0",
                                 ln2=f"{b}.ff.norm", fc1=f"{b}.ff.fn.net.0", fc2=f"{b}.ff.fn.net.3")
  return rules


def head_rules(path):
  """The release's `head` Linear -> our Dense at `path` (ecg_proj, disease_head)."""
  return mapping.dense("head", path)
