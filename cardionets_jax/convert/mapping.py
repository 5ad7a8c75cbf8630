"""PyTorch state_dict -> Flax params by explicit rules, checked key by key and shape by shape.

A `Rule` reads one or more state_dict keys and writes one or more of our parameter paths. Applying
a list of rules to a state_dict fills a copy of our model's parameter tree (its shapes from
`jax.eval_shape`) and reports, like `load_state_dict(strict=True)` would:

  mapped   every key read, its shape and the path(s) it went to;
  unused   keys no rule reads but the source is known to hold (a decoder, a classifier head),
           each with the reason it is dropped;
  missing  keys a rule needs that the file lacks, and parameters of ours no rule fills.

Anything else (an unexpected key, a wrong shape) is a `ConvertError` naming the key.
"""

import dataclasses
import re
from typing import Callable, Tuple

import numpy as np


class ConvertError(ValueError):
  """A state_dict that does not fit the model: names the key (and shapes) at fault."""


@dataclasses.dataclass(frozen=True)
class Rule:
  keys: Tuple[str, ...]        # state_dict keys read together
  fn: Callable                 # (*arrays) -> {our path "a/b/c": array}


def to(key, path, transform=None):
  """One key to one path, through `transform` (e.g. `linear`)."""
  return Rule((key,), lambda a: {path: a if transform is None else transform(a)})


def linear(weight):
  """torch Linear weight (out, in) -> Dense kernel (in, out)."""
  return weight.T


def norm(key, path):
  """torch LayerNorm -> flax LayerNorm."""
  return [to(f"{key}.weight", f"{path}/scale"), to(f"{key}.bias", f"{path}/bias")]


def dense(key, path):
  """torch Linear -> flax Dense."""
  return [to(f"{key}.weight", f"{path}/kernel", linear),
          to(f"{key}.bias", f"{path}/bias")]


def split_qkv(prefix, num_heads):
  """A fused qkv Linear's (weight, bias) -> our query/key/value kernels (width, heads, head_dim)
  and biases (heads, head_dim). torch chunks the 3 * inner outputs as [q | k | v], each head-major
  ('b n (h d)')."""
  def weight(w):
    inner = w.shape[0] // 3
    return {f"{prefix}/{n}_kernel": part.T.reshape(w.shape[1], num_heads, inner // num_heads)
            for n, part in zip(("query", "key", "value"), np.split(w, 3, axis=0))}

  def bias(b):
    return {f"{prefix}/{n}_bias": part.reshape(num_heads, -1)
            for n, part in zip(("query", "key", "value"), np.split(b, 3))}
  return weight, bias


def out_projection(num_heads):
  """torch Linear (width, inner) after attention -> our out_kernel (heads, head_dim, width)."""
  return lambda w: w.T.reshape(num_heads, w.shape[1] // num_heads, w.shape[0])


def block_rules(ours, num_heads, *, ln1, qkv, out, ln2, fc1, fc2):
  """One pre-norm transformer block (torch module names given) -> our EncoderBlock at `ours`:
  norm, fused qkv split into query/key/value, output projection, norm, two-layer MLP."""
  qkv_weight, qkv_bias = split_qkv(f"{ours}/attn", num_heads)
  return (norm(ln1, f"{ours}/ln1")
          + [Rule((f"{qkv}.weight",), qkv_weight), Rule((f"{qkv}.bias",), qkv_bias),
             to(f"{out}.weight", f"{ours}/attn/out_kernel", out_projection(num_heads)),
             to(f"{out}.bias", f"{ours}/attn/out_bias")]
          + norm(ln2, f"{ours}/ln2") + dense(fc1, f"{ours}/mlp/fc1") + dense(fc2, f"{ours}/mlp/fc2"))


def count_indexed(state_dict, pattern):
  r"""How many numbered modules a state_dict holds: 1 + the largest index `pattern`'s group 1
  matches at the start of a key (0 when none does), e.g. r"encoder_blocks\.(\d+)\."."""
  found = {int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))}
  return 1 + max(found) if found else 0


def flatten(tree, prefix=""):
  """{"a": {"b": x}} -> {"a/b": x}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def unflatten(flat):
  tree = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def apply(state_dict, rules, target, known_unused=()):
  """Fills `target` ({path: ShapeDtypeStruct}, flat) from `state_dict` by `rules`.

  `known_unused`: (regex, reason) pairs for keys the source holds and we drop. Returns
  (flat params {path: float32 array}, report). The report is complete even when the state_dict
  does not fit; `check(report)` then raises.
  """
  params, mapped, missing, errors = {}, [], [], []
  read = set()
  for rule in rules:
    absent = [k for k in rule.keys if k not in state_dict]
    if absent:
      missing.extend(absent)
      continue
    read.update(rule.keys)
    arrays = rule.fn(*(np.asarray(state_dict[k]) for k in rule.keys))
    for path, value in arrays.items():
      want = target.get(path)
      if want is None:
        errors.append(f"{', '.join(rule.keys)} maps to {path}, which the model does not have")
      elif tuple(value.shape) != tuple(want.shape):
        errors.append(f"{', '.join(rule.keys)} has shape "
                      f"{' x '.join(str(tuple(state_dict[k].shape)) for k in rule.keys)}: "
                      f"{path} needs {tuple(want.shape)}, got {tuple(value.shape)}")
      else:
        params[path] = np.asarray(value, np.float32)
    for k in rule.keys:
      mapped.append(dict(key=k, shape=list(state_dict[k].shape), to=sorted(arrays)))
  unused = []
  for key in sorted(set(state_dict) - read):
    reason = next((why for pattern, why in known_unused if re.fullmatch(pattern, key)), None)
    if reason is None:
      errors.append(f"unexpected key {key} {tuple(state_dict[key].shape)}: no rule reads it")
    unused.append(dict(key=key, shape=list(state_dict[key].shape),
                       reason=reason or "unexpected"))
  missing.extend(f"(ours) {p}" for p in sorted(set(target) - set(params))
                 if not any(p in m["to"] for m in mapped))
  report = dict(mapped=mapped, unused=unused, missing=missing, errors=errors)
  return params, report


def check(report, source):
  """Raises ConvertError (carrying `report`) when it has errors or missing keys."""
  problems = report["errors"] + [f"missing key {k}" for k in report["missing"]]
  if problems:
    error = ConvertError(f"{source}: {len(problems)} problem(s): " + "; ".join(problems[:8])
                         + (" ..." if len(problems) > 8 else ""))
    error.report = report
    raise error
