"""Basis Sharing (arXiv 2410.03765): calibration, whitened group SVD, compression, export."""
