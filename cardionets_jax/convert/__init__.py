"""PyTorch checkpoints of the authors' release and of ST-MEM / timm, read without torch."""
