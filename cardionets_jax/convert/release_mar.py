"""The release's MAR + diffusion head state_dict (`generation/checkpoint-last.pth`, its
`model_ema`; LTH14/mar's MAR with the ECG condition) -> `MAR`.

Key names (torch Linear weights are (out, in); ours (in, out)):

  fake_latent (1, W)                     -> null_condition (W,)
  ecg_emb.0, ecg_emb.1                   -> cond_fc1, cond_fc2 (no activation between)
  z_proj, z_proj_ln                      -> token_proj, token_ln
  encoder_pos_embed_learned (1, B+S, W)  -> encoder_pos (B+S, W)
  encoder_blocks.{i}.* (timm Block)      -> encoder/block{i}/*;  encoder_norm -> encoder/ln_final
  decoder_embed, mask_token (1, 1, W)    -> decoder_proj, mask_token (W,)
  decoder_pos_embed_learned              -> decoder_pos
  decoder_blocks.{i}.*, decoder_norm     -> decoder/block{i}/*, decoder/ln_final
  diffusion_pos_embed_learned (1, S, W)  -> diffusion_pos (S, W)
  diffloss.net.time_embed.mlp.{0,2}      -> head/time_fc1, head/time_fc2
  diffloss.net.cond_embed, input_proj    -> head/cond_proj, head/input_proj
  diffloss.net.res_blocks.{i}.{in_ln, mlp.0, mlp.2, adaLN_modulation.1}
                                         -> head/block{i}/{ln, fc1, fc2, modulation}
  diffloss.net.final_layer.{linear, adaLN_modulation.1} -> head/out, head/final_modulation
  fake_rep_latent, rep_embedder, decoder_pred   dropped: off in the release's configuration

Both keep the release's token layout, values (c, pt, ph, pw) inside a token, so nothing is
permuted.
"""

from cardionets_jax.convert import mapping

HEAD_DIM = 64   # timm's Block at width 768 with 12 heads (weights do not say)
KNOWN_UNUSED = [
    (r"fake_rep_latent", "the representation condition's null vector: use_rep_cond is off"),
    (r"rep_embedder\.(weight|bias)", "the representation condition: use_rep_cond is off"),
    (r"decoder_pred\.(weight|bias)", "the optional MAE loss's head: use_mae_loss is off"),
]


def sizes(state_dict, num_heads=None):
  """MAR's sizes read from the state_dict's shapes."""
  need = ("z_proj.weight", "ecg_emb.0.weight", "diffusion_pos_embed_learned",
          "encoder_pos_embed_learned", "diffloss.net.input_proj.weight")
  absent = [k for k in need if k not in state_dict]
  if absent:
    raise mapping.ConvertError(f"not the release's MAR state_dict: no {', '.join(absent)} "
                               f"(it holds {sorted(state_dict)[:6]} ...)")
  width, token_dim = (int(n) for n in state_dict["z_proj.weight"].shape)
  seq_len = int(state_dict["diffusion_pos_embed_learned"].shape[1])
  decoder_width = int(state_dict["decoder_embed.weight"].shape[0])
  head = lambda w: max(w // HEAD_DIM, 1)
  return dict(
      seq_len=seq_len, token_dim=token_dim, width=width,
      depth=mapping.count_indexed(state_dict, r"encoder_blocks\.(\d+)\."), num_heads=num_heads or head(width),
      mlp_dim=int(state_dict["encoder_blocks.0.mlp.fc1.weight"].shape[0]),
      decoder_width=decoder_width, decoder_depth=mapping.count_indexed(state_dict, r"decoder_blocks\.(\d+)\."),
      decoder_heads=num_heads or head(decoder_width),
      decoder_mlp_dim=int(state_dict["decoder_blocks.0.mlp.fc1.weight"].shape[0]),
      buffer_size=int(state_dict["encoder_pos_embed_learned"].shape[1]) - seq_len,
      head_width=int(state_dict["diffloss.net.input_proj.weight"].shape[0]),
      head_depth=mapping.count_indexed(state_dict, r"diffloss\.net\.res_blocks\.(\d+)\."),
      embed_dim=int(state_dict["ecg_emb.0.weight"].shape[1]))


def _row(key, path):
  """A (1, W) or (1, 1, W) or (1, N, W) parameter -> ours without the leading ones."""
  return mapping.to(key, path, lambda a: a.reshape(a.shape[-2:] if a.shape[-2] > 1 else a.shape[-1:]))


def _blocks(torch, ours, depth, num_heads):
  rules = []
  for i in range(depth):
    b = f"{torch}_blocks.{i}"
    rules += mapping.block_rules(f"{ours}/block{i}", num_heads, ln1=f"{b}.norm1",
                                 qkv=f"{b}.attn.qkv", out=f"{b}.attn.proj", ln2=f"{b}.norm2",
                                 fc1=f"{b}.mlp.fc1", fc2=f"{b}.mlp.fc2")
  return rules + mapping.norm(f"{torch}_norm", f"{ours}/ln_final")


def rules(s, prefix=""):
  """Every rule from the release's state_dict to MAR params (under `prefix`, e.g. '' or 'x/')."""
  p, net = prefix, "diffloss.net"
  out = [_row("fake_latent", f"{p}null_condition"), _row("mask_token", f"{p}mask_token"),
         _row("encoder_pos_embed_learned", f"{p}encoder_pos"),
         _row("decoder_pos_embed_learned", f"{p}decoder_pos"),
         _row("diffusion_pos_embed_learned", f"{p}diffusion_pos")]
  out += mapping.dense("ecg_emb.0", f"{p}cond_fc1") + mapping.dense("ecg_emb.1", f"{p}cond_fc2")
  out += mapping.dense("z_proj", f"{p}token_proj") + mapping.norm("z_proj_ln", f"{p}token_ln")
  out += _blocks("encoder", f"{p}encoder", s["depth"], s["num_heads"])
  out += mapping.dense("decoder_embed", f"{p}decoder_proj")
  out += _blocks("decoder", f"{p}decoder", s["decoder_depth"], s["decoder_heads"])
  h = f"{p}head"
  out += (mapping.dense(f"{net}.time_embed.mlp.0", f"{h}/time_fc1")
          + mapping.dense(f"{net}.time_embed.mlp.2", f"{h}/time_fc2")
          + mapping.dense(f"{net}.cond_embed", f"{h}/cond_proj")
          + mapping.dense(f"{net}.input_proj", f"{h}/input_proj"))
  for i in range(s["head_depth"]):
    r = f"{net}.res_blocks.{i}"
    out += (mapping.norm(f"{r}.in_ln", f"{h}/block{i}/ln")
            + mapping.dense(f"{r}.mlp.0", f"{h}/block{i}/fc1")
            + mapping.dense(f"{r}.mlp.2", f"{h}/block{i}/fc2")
            + mapping.dense(f"{r}.adaLN_modulation.1", f"{h}/block{i}/modulation"))
  return out + (mapping.dense(f"{net}.final_layer.linear", f"{h}/out")
                + mapping.dense(f"{net}.final_layer.adaLN_modulation.1", f"{h}/final_modulation"))
