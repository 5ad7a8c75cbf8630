"""timm's `VisionTransformer` state_dict (the release's CMR encoder: ViT-B/16, 50 frames as input
channels; MAE's `models_vit`) -> `CmrEncoder`.

  cls_token (1, 1, W), pos_embed (1, 1 + N, W)   -> cls (with pos_embed[:, 0] folded in), pos_embed
  patch_embed.proj.* Conv2d(C, W, p, stride p)   -> patch_embed (C * p * p, W), in (c, y, x) order
  blocks.{i}.norm1.*, .norm2.*                   -> transformer/block{i}/ln1, ln2
  blocks.{i}.attn.qkv.*  Linear(W, 3 W), fused   -> attn/{query,key,value}_{kernel,bias}
  blocks.{i}.attn.proj.*                         -> attn/out_{kernel,bias}
  blocks.{i}.mlp.fc1.*, .fc2.*                   -> mlp/fc1, mlp/fc2
  norm.*                                         -> transformer/ln_final
"""

import math

from cardionets_jax.convert import mapping

HEAD_DIM = 64

KNOWN_UNUSED = (
    (r"head\.(weight|bias)", "timm's classifier head (the release's CMR projector is not published)"),
    (r"fc_norm\.(weight|bias)", "timm's norm after global pooling: the release pools the CLS token"),
    (r"(decoder_.*|mask_token)", "MAE's pre-training decoder"),
)


def sizes(state_dict, num_heads=None):
  """The encoder's sizes and input (frames = input channels, image size) from its shapes."""
  need = ("pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
  absent = [k for k in need if k not in state_dict]
  if absent:
    raise mapping.ConvertError(f"not a timm VisionTransformer state_dict: no {', '.join(absent)} "
                               f"(it holds {sorted(state_dict)[:6]} ...)")
  width, channels, patch, _ = state_dict["patch_embed.proj.weight"].shape
  grid = math.isqrt(state_dict["pos_embed"].shape[1] - 1)
  depth = mapping.count_indexed(state_dict, r"blocks\.(\d+)\.")
  return dict(width=int(width), depth=depth, num_heads=int(num_heads or max(width // HEAD_DIM, 1)),
              mlp_dim=int(state_dict["blocks.0.mlp.fc1.weight"].shape[0]), patch_size=int(patch),
              frames=int(channels), image_size=int(grid * patch))


def _cls_and_positions(prefix):
  def fn(cls_token, pos_embed):
    return {f"{prefix}/cls": cls_token + pos_embed[:, :1], f"{prefix}/pos_embed": pos_embed[:, 1:]}
  return mapping.Rule(("cls_token", "pos_embed"), fn)


def encoder_rules(prefix, depth, num_heads):
  """Rules from a timm ViT state_dict to a CmrEncoder at our `prefix` (e.g. 'encoder')."""
  p = prefix
  patch_kernel = lambda w: w.reshape(w.shape[0], -1).T
  rules = [_cls_and_positions(p),
           mapping.to("patch_embed.proj.weight", f"{p}/patch_embed/kernel", patch_kernel),
           mapping.to("patch_embed.proj.bias", f"{p}/patch_embed/bias")]
  rules += mapping.norm("norm", f"{p}/transformer/ln_final")
  for i in range(depth):
    b = f"blocks.{i}"
    rules += mapping.block_rules(f"{p}/transformer/block{i}", num_heads, ln1=f"{b}.norm1",
                                 qkv=f"{b}.attn.qkv", out=f"{b}.attn.proj", ln2=f"{b}.norm2",
                                 fc1=f"{b}.mlp.fc1", fc2=f"{b}.mlp.fc2")
  return rules
