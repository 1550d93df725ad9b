"""The one-vs-rest logistic regression both heads are fit with (numpy + scipy, no torch)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from exporter.head_artefacts import sigmoid


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, max_iterations: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest logistic regression on standardized `x` [n, d] and 0/1 `y` [n, c].

    Each label's positives and its negatives get equal total weight (positives are a few % of
    the windows); the L2 term spares the bias. All labels are fit at once with L-BFGS.

    Returns:
        (weights [d, c], bias [c]).

    Raises:
        RuntimeError: L-BFGS did not converge within `max_iterations`.
    """
    n, d = x.shape
    c = y.shape[1]
    pos = y.sum(axis=0)
    weight = np.where(y > 0, 0.5 / np.maximum(pos, 1), 0.5 / np.maximum(n - pos, 1))

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: d * c].reshape(d, c), theta[d * c :]
        z = x @ w + b
        # log(1 + e^z) - y z, stable for large |z|
        value = float((weight * (np.logaddexp(0.0, z) - y * z)).sum() + 0.5 * l2 * (w**2).sum())
        grad_z = weight * (sigmoid(z) - y)
        return value, np.concatenate([(x.T @ grad_z + l2 * w).ravel(), grad_z.sum(axis=0)])

    result = minimize(loss, np.zeros(d * c + c), jac=True, method="L-BFGS-B", options={"maxiter": max_iterations})
    if not result.success:
        raise RuntimeError(f"logistic regression did not converge: {result.message}")
    return result.x[: d * c].reshape(d, c), result.x[d * c :]
