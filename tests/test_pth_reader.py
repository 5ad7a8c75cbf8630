"""The torch-free .pth reader: torch's own file read back exactly; nothing outside the allow-list
is ever called."""

import os
import pickle
import zipfile

import numpy as np
import pytest

from cardionets_jax.convert import pth_reader

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


def test_torch_saved_tensors_read_back_exactly():
  # Written by torch 2.13 (tests/golden/make_pth_reader_golden.py): views with strides and
  # offsets into one shared storage, 16-bit floats, integers, bools, a scalar, an empty tensor, a
  # Parameter, and plain Python values beside the state_dict.
  checkpoint = pth_reader.load(os.path.join(GOLDEN, "pth_reader.pth"))
  assert checkpoint["epoch"] == 7 and checkpoint["note"] == "golden" and checkpoint["lr"] == [0.1, 0.01]
  reference = np.load(os.path.join(GOLDEN, "pth_reader.npz"))
  model = pth_reader.state_dict(os.path.join(GOLDEN, "pth_reader.pth"), key="model")
  assert list(model) == list(reference.files)
  for name, want in reference.items():
    got = model[name]
    assert got.shape == want.shape, name
    if name == "bfloat16":
      assert got.dtype.name == "bfloat16"
      got = got.astype(np.float32)
    else:
      assert got.dtype == want.dtype, name
    np.testing.assert_array_equal(got, want, err_msg=name)
  assert model["transposed"].flags["C_CONTIGUOUS"]          # copied out of the strided view


def _write_pth(path, payload, records=None):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", payload)
    for name, data in (records or {}).items():
      z.writestr(f"archive/data/{name}", data)
  return str(path)


def test_a_pickle_naming_anything_else_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "PWNED"
  evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()      # os.system("touch ...")
  with pytest.raises(pth_reader.PthError, match=r"names os\.system.*nothing was executed"):
    pth_reader.load(_write_pth(tmp_path / "evil.pth", evil))
  assert not marker.exists()
  # A model class pickled whole (torch.save(model)) is refused the same way, by name.
  whole = b"c__main__\nNet\n)\x81."
  with pytest.raises(pth_reader.PthError, match=r"__main__\.Net"):
    pth_reader.load(_write_pth(tmp_path / "model.pth", whole))


def test_malformed_files_are_clear_errors(tmp_path):
  (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(pth_reader.PthError, match="not a torch.save zip archive"):
    pth_reader.load(str(tmp_path / "plain.pkl"))
  with pytest.raises(pth_reader.PthError, match="expected one data.pkl"):
    pth_reader.load(str(_empty_zip(tmp_path / "none.pth")))
  # A storage record shorter than the tensor it backs.
  golden = os.path.join(GOLDEN, "pth_reader.pth")
  with zipfile.ZipFile(golden) as z:
    names = {n: z.read(n) for n in z.namelist()}
  short = tmp_path / "short.pth"
  with zipfile.ZipFile(short, "w") as z:
    for n, data in names.items():
      z.writestr(n, data[:4] if "/data/" in n else data)
  with pytest.raises(pth_reader.PthError, match="holds 1 elements|elements, not"):
    pth_reader.load(str(short))
  with pytest.raises(pth_reader.PthError, match="no entry 'model_ema'"):
    pth_reader.state_dict(golden, key="model_ema")
  with pytest.raises(pth_reader.PthError, match="not a state_dict"):
    pth_reader.state_dict(golden)


def _empty_zip(path):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/version", "3\n")
  return path
