"""Opt-in kernels over the plain-PyTorch models (`speedups: auto|off`): `lightning_nmt.kernels.cpu`."""
