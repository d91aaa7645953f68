"""How close to the click oracle a learner can get on a generated world, as the data per user
grows: the reference for issue #7's "click AUC within 0.02 of the oracle" target.

The oracle scores each (user, item) pair of the evaluated day with the generator's true taste
and popularity terms. A model never sees the users' true taste vectors: it has to infer them
from the users' impressions before that day. This benchmark measures how much that inference
costs with a deliberately strong learner, which is given everything except the users:

- every item's true latent vector and the true popularity of every impression;
- the click model's constants (taste weight, position and hour effects, bias);
- the prior of the users' vectors.

For each user it fits only the taste vector: the MAP estimate of a logistic regression on that
user's impressions before the evaluated day (Newton steps, with the generator's Gaussian prior).
Its AUC on the evaluated day's (user, item) pairs, scored like the oracle (taste + popularity),
bounds what any model that learns users from their own history can reach. A real model also has
to learn the items, so it stays below this bound.

The worlds are simulated in-process with the generator's own code (``mtl.generate``, no Spark);
with the default arguments the first world is the one of benchmarks/evaluate.py's quality run
(its 6,709 pairs and oracle AUC 0.7965 are reproduced exactly).

    .venv/bin/python benchmarks/click_bound.py --sessions-per-user-day 0.6 3 6
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtl import metric_functions as M  # noqa: E402
from mtl.config import GeneratorConfig  # noqa: E402
from mtl.generate.simulate import simulate_block  # noqa: E402
from mtl.generate.world import CLICK, HOUR_EFFECT, World, block_count, build_world  # noqa: E402

NEWTON_STEPS = 15


def impressions(world: World, g: GeneratorConfig) -> pd.DataFrame:
    """Every impression of the simulated log, with its true terms and outcome."""
    parts = []
    for block in range(block_count(g)):
        b = simulate_block(world, g, block)
        parts.append(
            pd.DataFrame(
                {
                    "user": b.users.ids[b.imp_user],
                    "item": b.imp_item,
                    "day": b.imp_day,
                    "position": b.imp_position,
                    "hour": b.imp_hour,
                    "popularity": b.imp_popularity,
                    "affinity": b.imp_affinity,
                    "clicked": b.clicked,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def index_of(ids: pd.Series) -> np.ndarray:
    """The generator's user or item index of an id (it writes index + 1 as the id)."""
    return ids.astype(int).to_numpy() - 1


def from_truth(truth: pd.DataFrame) -> pd.DataFrame:
    """The generator's truth/impressions rows in the columns of ``impressions``."""
    return pd.DataFrame(
        {
            "user": index_of(truth["user_id"]),
            "item": index_of(truth["item_id"]),
            "day": truth["day"],
            "position": truth["position"],
            "hour": truth["hour"],
            "popularity": truth["true_popularity"],
            "affinity": truth["true_affinity"],
            "clicked": truth["clicked"],
        }
    )


def learned_user_vectors(history: pd.DataFrame, item_vectors: np.ndarray, users: int, prior_var: float) -> np.ndarray:
    """[users, d]: each user's MAP taste vector from their impressions (zero, the prior's mean,
    for a user without any)."""
    d = item_vectors.shape[1]
    out = np.zeros((users, d))
    for user, rows in history.groupby("user"):
        x = CLICK.taste * item_vectors[rows["item"].to_numpy()]
        known = (
            CLICK.popularity * rows["popularity"].to_numpy()
            + CLICK.position * rows["position"].to_numpy()
            + HOUR_EFFECT[rows["hour"].to_numpy()]
            + CLICK.bias
        )
        y = rows["clicked"].to_numpy(dtype=float)
        w = np.zeros(d)
        for _ in range(NEWTON_STEPS):
            p = 1.0 / (1.0 + np.exp(-(x @ w + known)))
            gradient = x.T @ (y - p) - w / prior_var
            hessian = (x * (p * (1 - p))[:, None]).T @ x + np.eye(d) / prior_var
            w += np.linalg.solve(hessian, gradient)
        out[user] = w
    return out


def prior_var(g: GeneratorConfig) -> float:
    """The generator draws user vectors as N(0, 4 / d) per component."""
    return 4.0 / g.latent_dim


def learned_logits(users: np.ndarray, item_vectors: np.ndarray, user, item, popularity) -> np.ndarray:
    """The oracle's taste + popularity logit of (user, item) pairs, with the learned user vectors."""
    taste = np.einsum("ij,ij->i", users[np.asarray(user)], item_vectors[np.asarray(item)])
    return CLICK.taste * taste + CLICK.popularity * np.asarray(popularity)


def bound(g: GeneratorConfig, eval_day: int) -> dict:
    world = build_world(g, "UTC")  # the time zone only moves timestamps, not outcomes
    log = impressions(world, g)
    history = log[log["day"] < eval_day]
    users = learned_user_vectors(history, world.item_vec, g.users, prior_var(g))
    pairs = (
        log[log["day"] == eval_day]
        .groupby(["user", "item"])
        .agg(clicked=("clicked", "max"), popularity=("popularity", "mean"), affinity=("affinity", "mean"))
        .reset_index()
    )
    y = pairs["clicked"].to_numpy(dtype=int)
    popularity = CLICK.popularity * pairs["popularity"].to_numpy()
    learned = learned_logits(users, world.item_vec, pairs["user"], pairs["item"], pairs["popularity"])
    return {
        "impressions_per_user": len(history) / history["user"].nunique(),
        "pairs": len(pairs),
        "clicks": int(y.sum()),
        "oracle": M.auc(y, CLICK.taste * pairs["affinity"].to_numpy() + popularity),
        "learned_users": M.auc(y, learned),
        "popularity": M.auc(y, popularity),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--popularity-exponent", type=float, default=0.5)
    parser.add_argument("--eval-day", type=int, default=14, help="day index evaluated (ds 2024-03-15 in evaluate.py)")
    parser.add_argument(
        "--sessions-per-user-day",
        type=float,
        nargs="+",
        default=[0.6],
        help="one world per value (generator.sessions_per_user_day; 0.6 is the default)",
    )
    args = parser.parse_args()

    print(
        "| sessions per user and day | impressions per user before D | pairs on D | clicks | "
        "oracle AUC | learned users, items known | gap | popularity |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for sessions in args.sessions_per_user_day:
        g = dataclasses.replace(
            GeneratorConfig(),
            users=args.users,
            items=args.items,
            categories=args.categories,
            days=args.days,
            popularity_exponent=args.popularity_exponent,
            sessions_per_user_day=sessions,
        )
        r = bound(g, args.eval_day)
        print(
            f"| {sessions:g} | {r['impressions_per_user']:.0f} | {r['pairs']:,} | {r['clicks']:,} | "
            f"{r['oracle']:.4f} | {r['learned_users']:.4f} | {r['oracle'] - r['learned_users']:.4f} | "
            f"{r['popularity']:.4f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
