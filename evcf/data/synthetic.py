"""A seeded synthetic rating dataset shaped like real explicit-feedback data.

It exists so that the whole pipeline runs offline and in minutes.  What it imitates:

* **User-activity skew**: items per user follow a log-normal distribution (a long tail of heavy
  users, many light ones; some below the 5-item filter).
* **Item-popularity skew**: within each latent taste, items are drawn with Zipf-like weights, and a
  share of every user's ratings come from a global popularity distribution.
* **Latent structure a model can learn**: every user has a primary and a secondary taste (topic); a
  taste is a distribution over items.  Ratings of on-taste items are mostly 4-5 stars, off-taste
  (popularity noise) ratings mostly 1-3, so the ≥4-star binarisation keeps the learnable signal.
* **Raw-id layout of MovieLens**: non-contiguous integer ids, rows grouped by user in ascending user
  id, items in random order within a user.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import write_with

__all__ = ["SyntheticSpec", "generate_ratings", "write_ratings"]


@dataclass(frozen=True)
class SyntheticSpec:
    n_users: int = 3000  # before the ≥5-items filter
    n_items: int = 800
    mean_items: float = 40.0  # mean ratings per user before deduplication
    n_topics: int = 20  # latent tastes
    zipf: float = 1.1  # popularity exponent within a taste and globally
    noise: float = 0.15  # share of a user's draws taken from global popularity (off-taste)
    seed: int = 0


def _zipf_weights(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** a
    return w[rng.permutation(n)] / w.sum()


def _draw_from(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, u, side="right"), cdf.size - 1)


def generate_ratings(spec: SyntheticSpec) -> pd.DataFrame:
    """Return a frame ``user, item, rating`` (int64, int64, float32) in MovieLens-like row order."""
    if spec.n_users < 1 or spec.n_items < 2 or spec.n_topics < 1 or spec.mean_items <= 0:
        raise ValueError(f"invalid synthetic spec {spec}")
    rng = np.random.default_rng(spec.seed)
    n_users, n_items = spec.n_users, spec.n_items

    # items per user: log-normal with the requested mean, at least one draw
    sigma = 0.9
    mu = np.log(spec.mean_items) - sigma**2 / 2
    draws = np.maximum(1, np.rint(rng.lognormal(mu, sigma, n_users))).astype(np.int64)
    draws = np.minimum(draws, n_items)

    topic_cdf = np.stack([np.cumsum(_zipf_weights(n_items, spec.zipf, rng)) for _ in range(spec.n_topics)])
    global_cdf = np.cumsum(_zipf_weights(n_items, spec.zipf, rng))
    primary = rng.integers(spec.n_topics, size=n_users)
    secondary = rng.integers(spec.n_topics, size=n_users)

    user = np.repeat(np.arange(n_users), draws)  # (n_draws,)
    kind = rng.random(user.size)  # < noise: popularity noise; else primary (75%) or secondary taste
    on_taste = kind >= spec.noise
    topic = np.where(kind < spec.noise + (1 - spec.noise) * 0.75, primary[user], secondary[user])
    u = rng.random(user.size)
    item = _draw_from(global_cdf, u)
    for t in range(spec.n_topics):
        sel = on_taste & (topic == t)
        item[sel] = _draw_from(topic_cdf[t], u[sel])

    # ratings: on-taste mostly 4-5 stars, noise mostly 1-3
    stars = np.arange(1, 6, dtype=np.float32)
    r_on = rng.choice(stars, size=user.size, p=[0.02, 0.05, 0.18, 0.40, 0.35])
    r_off = rng.choice(stars, size=user.size, p=[0.20, 0.30, 0.30, 0.15, 0.05])
    rating = np.where(on_taste, r_on, r_off).astype(np.float32)

    # one rating per (user, item): keep the first draw
    _, first = np.unique(user * n_items + item, return_index=True)
    first.sort()
    user, item, rating = user[first], item[first], rating[first]

    # shuffle within user (rows stay grouped by ascending user, like MovieLens' ratings.csv)
    order = np.lexsort((rng.random(user.size), user))
    user, item, rating = user[order], item[order], rating[order]

    # non-contiguous raw ids, ascending in the internal index for users
    user_ids = np.sort(rng.choice(np.arange(1, 10 * n_users + 1), size=n_users, replace=False))
    item_ids = rng.choice(np.arange(1, 5 * n_items + 1), size=n_items, replace=False)
    return pd.DataFrame(
        {"user": user_ids[user].astype(np.int64), "item": item_ids[item].astype(np.int64), "rating": rating}
    )


def write_ratings(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``user,item,rating`` CSV atomically (the ``csv`` raw format)."""
    return write_with(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%g"))
