"""The synthetic world: categories, items and users with known latent structure.

Everything is a pure function of the generator config (and seed): the same config gives the
same arrays on every machine. Users are generated block by block, so a block can be simulated
on any executor without the others.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np

from mtl.config import GeneratorConfig

# Share of sessions starting in each hour of the (business) day: quiet nights, evening peak.
HOUR_PROFILE = np.array(
    [
        1,
        0.6,
        0.4,
        0.3,
        0.3,
        0.4,
        0.8,
        1.5,
        2.2,
        2.6,
        2.8,
        3.0,
        3.2,
        3.0,
        2.9,
        2.9,
        3.0,
        3.2,
        3.6,
        4.2,
        4.8,
        5.0,
        4.2,
        2.4,
    ]
)
HOUR_PROFILE = HOUR_PROFILE / HOUR_PROFILE.sum()


@dataclass(frozen=True)
class ClickModel:
    """logit p(click | impression) = taste * <u, v> + popularity * pop(i, day) + position * k
    + hour_effect[h] + bias."""

    taste: float = 1.5
    popularity: float = 0.5
    position: float = -0.12
    bias: float = -2.8


@dataclass(frozen=True)
class PurchaseModel:
    """logit p(purchase | click) = taste * <u, v> - price_sensitivity_u * log(price / category price)
    + bias; p(cart | click) and p(fav | click) are constants by outcome."""

    taste: float = 1.2
    bias: float = -3.3
    cart_if_purchase: float = 0.6
    cart_otherwise: float = 0.1
    fav: float = 0.05


CLICK = ClickModel()
PURCHASE = PurchaseModel()
HOUR_EFFECT = 0.4 * np.sin((np.arange(24) - 14) / 24 * 2 * np.pi)


@dataclass
class World:
    start_epoch: int  # midnight of day 0 in the business time zone, as Unix seconds
    cat_consumable: np.ndarray  # bool [C]
    cat_cycle: np.ndarray  # int [C], days between a purchase and its replenishment
    cat_jitter: np.ndarray  # int [C], +- days around the cycle
    cat_price: np.ndarray  # float [C], typical price level
    item_cat: np.ndarray  # int [I]
    item_vec: np.ndarray  # float [I, d]
    item_pop: np.ndarray  # float [I], base popularity logit
    item_phase: np.ndarray  # float [I]
    item_period: np.ndarray  # float [I], days
    item_price: np.ndarray  # float [I]
    item_release: np.ndarray  # int [I], first day the item can be shown
    cat_items: list[np.ndarray]  # items of each category a replenishment may switch to

    def popularity(self, day: int, drift: float) -> np.ndarray:
        """Popularity logit of every item on ``day`` (a slow swing per item: the drift)."""
        return self.item_pop + drift * np.sin(2 * np.pi * day / self.item_period + self.item_phase)


def build_world(g: GeneratorConfig, business_time_zone: str) -> World:
    rng = np.random.default_rng([g.seed, 0])
    d = g.latent_dim
    cats, items = g.categories, g.items

    cat_consumable = rng.random(cats) < g.consumable_share
    cat_cycle = rng.integers(g.cycle_days_min, g.cycle_days_max + 1, cats)
    cat_jitter = np.maximum(1, cat_cycle // 4)
    cat_price = np.exp(rng.normal(3.0, 0.8, cats)).round(2)
    centroids = rng.normal(0.0, 1.0, (cats, d))

    # Category sizes follow a power law too: a few big categories, a long tail.
    cat_weight = 1.0 / np.arange(1, cats + 1) ** 0.8
    item_cat = np.concatenate([np.arange(cats), rng.choice(cats, items - cats, p=cat_weight / cat_weight.sum())])
    rng.shuffle(item_cat)
    item_vec = centroids[item_cat] + rng.normal(0.0, 0.6, (items, d))
    item_vec *= 1.2 / np.sqrt(d)  # so that <u, v> has a standard deviation of about 1
    rank = rng.permutation(items) + 1
    item_pop = -g.popularity_exponent * np.log(rank)
    item_pop -= item_pop.mean()
    item_phase = rng.uniform(0, 2 * np.pi, items)
    item_period = rng.uniform(7, 60, items)
    item_price = (cat_price[item_cat] * np.exp(rng.normal(0.0, 0.3, items))).round(2)
    is_new = rng.random(items) < g.new_item_share
    item_release = np.where(is_new, rng.integers(1, max(2, g.days), items), 0)
    # Items a replenishment may switch to: those on sale from day 0 (all, if a category has none).
    order = np.argsort(item_cat, kind="stable")
    bounds = np.searchsorted(item_cat[order], np.arange(cats + 1))
    cat_items = []
    for c in range(cats):
        members = order[bounds[c] : bounds[c + 1]]
        initial = members[item_release[members] == 0]
        cat_items.append(initial if len(initial) else members)

    start = dt.datetime.combine(dt.date.fromisoformat(g.start_date), dt.time(), ZoneInfo(business_time_zone))
    return World(
        start_epoch=int(start.timestamp()),
        cat_consumable=cat_consumable,
        cat_cycle=cat_cycle,
        cat_jitter=cat_jitter,
        cat_price=cat_price,
        item_cat=item_cat,
        item_vec=item_vec,
        item_pop=item_pop,
        item_phase=item_phase,
        item_period=item_period,
        item_price=item_price,
        item_release=item_release,
        cat_items=cat_items,
    )


@dataclass
class Users:
    ids: np.ndarray  # int [n], global user index
    vec: np.ndarray  # float [n, d], taste
    activity: np.ndarray  # float [n], mean sessions per day
    price_sensitivity: np.ndarray  # float [n]
    loyalty: np.ndarray  # float [n], multiplies the category's repurchase probability


def block_users(g: GeneratorConfig, block: int) -> Users:
    """The users of one block; their attributes depend only on (seed, block)."""
    rng = np.random.default_rng([g.seed, 1, block])
    ids = np.arange(block * g.users_per_block, min((block + 1) * g.users_per_block, g.users))
    n = len(ids)
    sigma = g.activity_sigma
    activity = g.sessions_per_user_day * np.exp(rng.normal(-sigma * sigma / 2, sigma, n))  # mean-preserving
    return Users(
        ids=ids,
        vec=rng.normal(0.0, 2.0, (n, g.latent_dim)) / np.sqrt(g.latent_dim),
        activity=activity,
        price_sensitivity=rng.uniform(0.5, 1.5, n),
        loyalty=rng.uniform(0.6, 1.0, n),
    )


def block_count(g: GeneratorConfig) -> int:
    return -(-g.users // g.users_per_block)
