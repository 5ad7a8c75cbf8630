"""Writes tests/golden/pth_reader.pth and pth_reader.npz: tensors of every dtype and layout the
reader must handle, saved by torch, and the same values as numpy (the reference).

Run by hand with a local torch (a CPU wheel is enough); CI reads the two files without torch:

  python tests/golden/make_pth_reader_golden.py
"""

import collections
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=g)
  tensors = collections.OrderedDict(
      weight=torch.randn(4, 3, generator=g),
      transposed=base.t(),                        # strides (1, 5): not contiguous
      sliced=base[1:5:2, 1:],                     # an offset into a shared storage
      shared=base,                                # the storage the two views above share
      half=torch.randn(3, 2, generator=g).half(),
      bfloat16=torch.randn(3, 2, generator=g).bfloat16(),
      int64=torch.arange(7),
      int8=torch.tensor([-3, 0, 5], dtype=torch.int8),
      flags=torch.tensor([True, False, True]),
      scalar=torch.tensor(2.5),
      empty=torch.zeros(0, 4),
  )
  tensors["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
  checkpoint = {"model": tensors, "epoch": 7, "note": "golden", "lr": [0.1, 0.01]}
  torch.save(checkpoint, os.path.join(HERE, "pth_reader.pth"))
  reference = {k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy()
               for k, v in tensors.items()}
  np.savez(os.path.join(HERE, "pth_reader.npz"), **reference)


if __name__ == "__main__":
  main()
