"""Evaluators: held-out measurements, each written once and used by every stage that needs it.

  splits          which split an evaluation reads (never a silent stand-in), passes over a split
  probe           ridge probes from frozen features onto the phenotypes (mae, align, mar)
  retrieval       ECG -> CMR retrieval in the shared space (align)
  reconstruction  a VAE's reconstruction of held-out cines, PSNR and SSIM (vae, mar)
  generation      cines generated from own / shuffled / no ECG against the true ones (mar)
  clinical        phenotype regression and disease screening reports with CIs (finetune)

Every result dict records the split(s) it was computed on.
"""
