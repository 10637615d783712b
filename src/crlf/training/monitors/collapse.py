"""The collapse watch: a warning when an epoch's embeddings stop spreading out."""

from __future__ import annotations

import math
import warnings

COLLAPSE_STD_FRACTION = 0.1  # warn when the embedding spread falls below 10 % of a uniform spread (1/sqrt(D))


def warn_if_collapsed(spread: float, dim: int, epoch: int, with_temperature: bool = True) -> None:
    """Warn when the embeddings' spread (``methods.base.embedding_spread``, an epoch's mean) is below 10 % of
    what ``dim``-dimensional unit vectors spread uniformly over the sphere give (1/sqrt(dim)).
    ``with_temperature``: the method has a temperature to check (its settings declare one)."""
    uniform = 1 / math.sqrt(dim)
    if spread < COLLAPSE_STD_FRACTION * uniform:
        check = "the learning rate and temperature" if with_temperature else "the learning rate"
        warnings.warn(
            f"possible collapse at epoch {epoch}: the spread of the L2-normalised embeddings is {spread:.4f} "
            f"(a uniform spread gives {uniform:.3f}). Check {check}.", stacklevel=3)
