"""FID, KID and Inception Score from InceptionV3 features (host-side numpy, float64).

- FID (Heusel et al. 2017, arXiv 1706.08500, eq. 6):
  ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), on the 2048-d pool features.
- KID (Bińkowski et al. 2018, arXiv 1801.01401, §3): the unbiased MMD² with the
  cubic kernel k(x, y) = (xᵀy/d + 1)³, averaged over random subsets.
- IS (Salimans et al. 2016, arXiv 1606.03498, §4): exp E_x KL(p(y|x) ‖ p(y)) over
  splits, from the 1008-way logits of the FID Inception.

`StreamingStats` accumulates n, Σx and Σxxᵀ in float64 over batches whose
padding is masked out, so the statistics of a split do not depend on how it was
batched, sharded or spread over processes.
"""

from __future__ import annotations

import numpy as np


class StreamingStats:
    """Float64 n, Σx, Σxxᵀ of feature rows; keeps up to `keep` rows for KID.

    Rows are buffered in float32 and folded into the float64 sums `chunk` at a
    time (one large float64 matmul instead of one per batch).
    """

    def __init__(self, dim: int, keep: int = 0, chunk: int = 4096):
        self.dim = dim
        self.n = 0
        self.sum = np.zeros((dim,), np.float64)
        self.sum_outer = np.zeros((dim, dim), np.float64)
        self._keep = keep
        self._kept: list[np.ndarray] = []
        self._num_kept = 0
        self._chunk = chunk
        self._pending: list[np.ndarray] = []
        self._num_pending = 0

    def update(self, features: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Adds the rows of `features` [B, D] where `mask` [B] is True (all if None)."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features {features.shape} must be [B, {self.dim}]")
        if mask is not None:
            features = features[np.asarray(mask, bool)]
        if not len(features):
            return
        if not np.all(np.isfinite(features)):
            raise ValueError("non-finite features: the network or its weights are broken")
        if self._num_kept < self._keep:
            take = features[: self._keep - self._num_kept].astype(np.float32)
            self._kept.append(take)
            self._num_kept += len(take)
        self._pending.append(features)
        self._num_pending += len(features)
        if self._num_pending >= self._chunk:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        x = np.concatenate(self._pending).astype(np.float64)
        self._pending, self._num_pending = [], 0
        self.n += len(x)
        self.sum += x.sum(axis=0)
        self.sum_outer += x.T @ x

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """→ (μ, Σ) with the unbiased (n − 1) covariance, as `np.cov` computes it."""
        self._fold()
        if self.n < 2:
            raise ValueError(f"{self.n} feature rows: FID needs at least 2.")
        mu = self.sum / self.n
        cov = (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, cov

    def features(self) -> np.ndarray:
        """The kept rows [min(n, keep), D] (float32)."""
        if not self._kept:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(self._kept)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """FID between N(μ₁, Σ₁) and N(μ₂, Σ₂) in float64 (Heusel et al. 2017, eq. 6):
    |μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½).

    Tr((Σ₁Σ₂)^½) = Σᵢ √λᵢ(Σ₁^½ Σ₂ Σ₁^½): Σ₁Σ₂ is similar to that symmetric PSD matrix,
    so two symmetric eigendecompositions give the trace exactly, singular covariances
    included (fewer samples than dimensions), with no complex parts to drop. At 2048
    dimensions this takes ~3 s on 2 CPU cores where pytorch-fid's `scipy.linalg.sqrtm` of
    the non-symmetric product takes ~21 s; both agree to float64 rounding
    (tests/test_fid.py).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different sizes: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    middle = root1 @ sigma2 @ root1
    # Rounding leaves eigenvalues of a PSD matrix a hair below zero: they count as 0.
    trace_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0,
                                           None)))
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)


def _unbiased_mmd2_cubic(x: np.ndarray, y: np.ndarray) -> float:
    # KID §3: k(a, b) = (aᵀb/d + 1)³; the unbiased MMD² leaves out the diagonals.
    d = x.shape[1]
    m = x.shape[0]
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID → (mean, std) of the unbiased cubic-kernel MMD² over random subsets.

    Subsets are drawn without replacement within a subset; `subset_size` shrinks
    to the smaller set's size when that is smaller.
    """
    f1 = np.asarray(features1, np.float64)
    f2 = np.asarray(features2, np.float64)
    size = min(subset_size, len(f1), len(f2))
    if size < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {len(f1)} and {len(f2)}")
    rng = np.random.default_rng(seed)
    values = [
        _unbiased_mmd2_cubic(
            f1[rng.choice(len(f1), size, replace=False)],
            f2[rng.choice(len(f2), size, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS → (mean, std) over `splits` equal parts of the logits [N, classes]."""
    logits = np.asarray(logits, np.float64)
    if len(logits) < splits:
        raise ValueError(f"{len(logits)} images for {splits} IS splits")
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    scores = []
    for part in np.array_split(log_p, splits):
        p = np.exp(part)
        log_marginal = np.log(p.mean(axis=0))
        kl = np.sum(p * (part - log_marginal), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
