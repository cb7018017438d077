"""Fréchet distance between two Gaussians (Fréchet 1957; Dowson & Landau 1982), as FID/VFID use it:

    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

The trace of the matrix square root is computed as the sum of the square roots of the eigenvalues of the
symmetric positive semi-definite ``S_1^{1/2} S_2 S_1^{1/2}`` (it has the eigenvalues of ``S_1 S_2``), in
float64; tiny negative eigenvalues from rounding are clipped to 0.
"""
from __future__ import annotations

import numpy as np


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d^2 between N(mu1, sigma1) and N(mu2, sigma2) (module docstring)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"Frechet distance of different dimensions: {mu1.shape} vs {mu2.shape}")
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and covariance (``np.cov(rowvar=False)``, normalised by N - 1) of (N, D) features."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D), got shape {features.shape}")
    return features.mean(0), np.atleast_2d(np.cov(features, rowvar=False))
