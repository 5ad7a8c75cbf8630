"""Reads a PyTorch `.pth` (the zip format of `torch.save`) into numpy arrays, without torch.

A `.pth` is a pickle: loading it with `pickle` or `torch.load(weights_only=False)` runs whatever
callables it names. This reader names the callables itself: the pickle may only refer to the
entries `torch.save` writes for tensors and containers (`ALLOWED`); tensor storages are read from
the zip's `data/<key>` records as raw little-endian bytes and viewed with the saved offset, size
and strides. Any other global (`os.system`, a model class, `argparse.Namespace`) is refused with
`PthError` naming it, before anything is called.
"""

import collections
import io
import pickle
import zipfile

import numpy as np

try:
  import ml_dtypes
  _BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # ml_dtypes comes with jax; without it bfloat16 tensors are refused
  _BFLOAT16 = None

# torch storage class -> numpy dtype of its elements.
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": _BFLOAT16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class PthError(ValueError):
  """The file is not a readable `.pth`, or its pickle names something outside the allow-list."""


class _Storage:
  def __init__(self, array):
    self.array = array


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2: a strided view of the storage, copied out."""
  del unused  # requires_grad, backward hooks, metadata: no meaning for numpy
  base = storage.array
  itemsize = base.dtype.itemsize
  if not size:
    return base[offset:offset + 1].reshape(()).copy()
  end = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
  if end > base.size:
    raise PthError(f"a tensor of size {tuple(size)} reads past its storage of {base.size} elements")
  view = np.lib.stride_tricks.as_strided(base[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return np.array(view, order="C")  # a copy: never a view into the file's bytes


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  del requires_grad, backward_hooks, unused
  return data


# (module, name) -> what the unpickler hands back for it. Nothing else can be named.
ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): name for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
  def __init__(self, data, archive, prefix, path):
    super().__init__(io.BytesIO(data))
    self.archive, self.prefix, self.path = archive, prefix, path

  def find_class(self, module, name):
    if (module, name) not in ALLOWED:
      raise PthError(f"{self.path}: the pickle names {module}.{name}, which is not a tensor or "
                     f"container entry of torch.save (allowed: "
                     f"{sorted(f'{m}.{n}' for m, n in ALLOWED)}); nothing was executed")
    return ALLOWED[(module, name)]

  def persistent_load(self, pid):
    """('storage', storage type, key, location, numel) -> the storage's elements."""
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise PthError(f"{self.path}: unknown persistent id {pid!r}")
    _, kind, key, _, numel = pid
    dtype = STORAGE_DTYPES.get(kind) if isinstance(kind, str) else None
    if dtype is None:
      raise PthError(f"{self.path}: storage type {kind!r} is not supported")
    name = f"{self.prefix}data/{key}"
    try:
      raw = self.archive.read(name)
    except KeyError as e:
      raise PthError(f"{self.path}: the zip has no record {name}") from e
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    if array.size < numel:
      raise PthError(f"{self.path}: record {name} holds {array.size} elements, not {numel}")
    return _Storage(array[:numel])


def load(path):
  """The object saved in `path` (dicts of numpy arrays, lists, numbers, strings)."""
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise PthError(f"{path}: not a torch.save zip archive ({e}); legacy (pre-1.6) files are "
                   "not read") from e
  with archive:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pickles) != 1:
      raise PthError(f"{path}: expected one data.pkl in the archive, found {pickles}")
    prefix = pickles[0][:-len("data.pkl")]
    try:
      return _Unpickler(archive.read(pickles[0]), archive, prefix, path).load()
    except PthError:
      raise
    except Exception as e:  # a malformed pickle: say so, whatever the pickle module raised
      raise PthError(f"{path}: cannot read its pickle: {type(e).__name__}: {e}") from e


def state_dict(path, key=None):
  """The flat {name: array} of a checkpoint: the file's dict itself, or its entry `key`
  (`model`, `state_dict`, `model_ema`), whichever holds arrays."""
  obj = load(path)
  if key is not None:
    if not isinstance(obj, dict) or key not in obj:
      raise PthError(f"{path}: no entry {key!r} (it holds {sorted(obj) if isinstance(obj, dict) else type(obj).__name__})")
    obj = obj[key]
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise PthError(f"{path}: {'entry ' + repr(key) if key else 'the file'} is not a state_dict "
                   "of tensors")
  return dict(obj)
