"""Simulating one block of users over every day: sessions, the impression -> click -> cart /
fav / purchase funnel, and the replenishment process of consumable categories.

Pure numpy: a block's output depends only on (config, block), so blocks run anywhere, in any
order, and give the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mtl.config import GeneratorConfig
from mtl.generate.world import CLICK, HOUR_EFFECT, HOUR_PROFILE, PURCHASE, Users, World, block_users

DAY = 86_400


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Block:
    users: Users
    # one entry per impression
    imp_user: np.ndarray  # index into users
    imp_item: np.ndarray
    imp_day: np.ndarray
    imp_ts: np.ndarray
    imp_position: np.ndarray
    imp_hour: np.ndarray
    imp_affinity: np.ndarray
    imp_popularity: np.ndarray
    p_click: np.ndarray
    clicked: np.ndarray
    p_purchase: np.ndarray  # NaN where not clicked
    purchased: np.ndarray
    carted: np.ndarray
    faved: np.ndarray
    # replenishment: one entry per purchase (organic or replenishment) that may be repeated
    spawn_user: np.ndarray
    spawn_item: np.ndarray
    spawn_cat: np.ndarray
    spawn_day: np.ndarray
    spawn_prob: np.ndarray  # probability the purchase is repeated at all
    spawn_lands: np.ndarray  # day the repeat happens, or -1 if it does not
    # replenishment purchases: one entry each
    rep_user: np.ndarray
    rep_item: np.ndarray
    rep_ts: np.ndarray


def simulate_block(world: World, g: GeneratorConfig, block: int) -> Block:
    users = block_users(g, block)
    rng = np.random.default_rng([g.seed, 2, block])
    n, k = len(users.ids), g.impressions_per_session
    purchased_keys = np.empty(0, dtype=np.int64)  # user * items + item: not shown again
    cols: dict[str, list[np.ndarray]] = {
        name: []
        for name in (
            "user",
            "item",
            "day",
            "ts",
            "position",
            "hour",
            "affinity",
            "popularity",
            "p_click",
            "clicked",
            "p_purchase",
            "purchased",
            "carted",
            "faved",
        )
    }

    for day in range(g.days):
        sessions = rng.poisson(users.activity)
        sess_user = np.repeat(np.arange(n), sessions)
        s = len(sess_user)
        if s == 0:
            continue
        hour = rng.choice(24, s, p=HOUR_PROFILE)
        start = world.start_epoch + day * DAY + hour * 3600 + rng.integers(0, 3600 - 3 * k - 120, s)
        weight = np.exp(world.popularity(day, g.popularity_drift)) * (world.item_release <= day)
        cdf = np.cumsum(weight)
        items = np.minimum(np.searchsorted(cdf, rng.random((s, k)) * cdf[-1]), g.items - 1)

        user = np.repeat(sess_user, k)
        item = items.ravel()
        position = np.tile(np.arange(k), s)
        hours = np.repeat(hour, k)
        ts = np.repeat(start, k) + 3 * position
        keep = ~np.isin(user.astype(np.int64) * g.items + item, purchased_keys)
        user, item, position, hours, ts = user[keep], item[keep], position[keep], hours[keep], ts[keep]

        affinity = np.einsum("ij,ij->i", users.vec[user], world.item_vec[item])
        popularity = world.popularity(day, g.popularity_drift)[item]
        p_click = _sigmoid(
            CLICK.taste * affinity
            + CLICK.popularity * popularity
            + CLICK.position * position
            + HOUR_EFFECT[hours]
            + CLICK.bias
        )
        clicked = rng.random(len(item)) < p_click
        log_rel_price = np.log(world.item_price[item] / world.cat_price[world.item_cat[item]])
        p_buy = _sigmoid(PURCHASE.taste * affinity - users.price_sensitivity[user] * log_rel_price + PURCHASE.bias)
        purchased = clicked & (rng.random(len(item)) < p_buy)
        cart_p = np.where(purchased, PURCHASE.cart_if_purchase, PURCHASE.cart_otherwise)
        carted = clicked & (rng.random(len(item)) < cart_p)
        faved = clicked & (rng.random(len(item)) < PURCHASE.fav)

        for name, values in (
            ("user", user),
            ("item", item),
            ("day", np.full(len(item), day)),
            ("ts", ts),
            ("position", position),
            ("hour", hours),
            ("affinity", affinity),
            ("popularity", popularity),
            ("p_click", p_click),
            ("clicked", clicked),
            ("p_purchase", np.where(clicked, p_buy, np.nan)),
            ("purchased", purchased),
            ("carted", carted),
            ("faved", faved),
        ):
            cols[name].append(values)
        purchased_keys = np.union1d(purchased_keys, user[purchased].astype(np.int64) * g.items + item[purchased])

    imp = {name: (np.concatenate(v) if v else np.empty(0)) for name, v in cols.items()}
    for name in ("user", "item", "day", "ts", "position", "hour"):
        imp[name] = imp[name].astype(np.int64)
    for name in ("clicked", "purchased", "carted", "faved"):
        imp[name] = imp[name].astype(bool)

    spawns, reps = _replenish(world, g, users, rng, imp)
    return Block(
        users=users,
        imp_user=imp["user"],
        imp_item=imp["item"],
        imp_day=imp["day"],
        imp_ts=imp["ts"],
        imp_position=imp["position"],
        imp_hour=imp["hour"],
        imp_affinity=imp["affinity"],
        imp_popularity=imp["popularity"],
        p_click=imp["p_click"],
        clicked=imp["clicked"],
        p_purchase=imp["p_purchase"],
        purchased=imp["purchased"],
        carted=imp["carted"],
        faved=imp["faved"],
        **spawns,
        **reps,
    )


def _replenish(world: World, g: GeneratorConfig, users: Users, rng: np.random.Generator, imp: dict):
    """Every purchase is repeated with the probability of its category (high for consumables,
    low for durables) times the user's loyalty, one cycle (+- jitter) later; repeats repeat too."""
    bought = imp["purchased"]
    q_user, q_item, q_day = imp["user"][bought], imp["item"][bought], imp["day"][bought]
    spawn = {k: [] for k in ("spawn_user", "spawn_item", "spawn_cat", "spawn_day", "spawn_prob", "spawn_lands")}
    rep = {k: [] for k in ("rep_user", "rep_item", "rep_ts")}
    while len(q_user):
        cat = world.item_cat[q_item]
        base = np.where(world.cat_consumable[cat], g.repurchase_prob_consumable, g.repurchase_prob_durable)
        prob = base * users.loyalty[q_user]
        happens = rng.random(len(q_user)) < prob
        delay = world.cat_cycle[cat] + rng.integers(-world.cat_jitter[cat], world.cat_jitter[cat] + 1)
        lands = np.where(happens, q_day + delay, -1)
        for key, values in zip(spawn, (q_user, q_item, cat, q_day, prob, lands)):
            spawn[key].append(values)

        due = happens & (lands < g.days)
        same = rng.random(len(q_user)) < g.repurchase_same_item
        pick = rng.random(len(q_user))
        other = np.array(
            [world.cat_items[c][int(p * len(world.cat_items[c]))] for c, p in zip(cat, pick)], dtype=np.int64
        )
        new_item = np.where(same, q_item, other)
        hour = rng.choice(24, len(q_user), p=HOUR_PROFILE)
        ts = world.start_epoch + lands * DAY + hour * 3600 + rng.integers(0, 3000, len(q_user))
        rep["rep_user"].append(q_user[due])
        rep["rep_item"].append(new_item[due])
        rep["rep_ts"].append(ts[due])
        q_user, q_item, q_day = q_user[due], new_item[due], lands[due]

    def cat_(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype=dtype)

    spawns = {k: cat_(v, np.float64 if k == "spawn_prob" else np.int64) for k, v in spawn.items()}
    reps = {k: cat_(v, np.int64) for k, v in rep.items()}
    return spawns, reps


# ---------------------------------------------------------------------------------------------
# tables of one block


def raw_events(world: World, b: Block) -> pd.DataFrame:
    """The behaviour log: impression, click, fav, cart and purchase events, sorted per user and time.
    Ids are 1-based strings, as in the public logs."""
    clicked, carted, faved, bought = b.clicked, b.carted, b.faved, b.purchased
    session_start = b.imp_ts - 3 * b.imp_position
    parts = [
        (b.imp_user, b.imp_item, b.imp_ts, "impression"),
        (b.imp_user[clicked], b.imp_item[clicked], b.imp_ts[clicked] + 1, "click"),
        (b.imp_user[faved], b.imp_item[faved], b.imp_ts[faved] + 2, "fav"),
        (b.imp_user[carted], b.imp_item[carted], session_start[carted] + 60 + b.imp_position[carted], "cart"),
        (b.imp_user[bought], b.imp_item[bought], session_start[bought] + 90 + b.imp_position[bought], "purchase"),
    ]
    # a replenishment is a visit to the item page and a purchase
    parts.append((b.rep_user, b.rep_item, b.rep_ts, "click"))
    parts.append((b.rep_user, b.rep_item, b.rep_ts + 30, "purchase"))
    frames = []
    for user, item, ts, kind in parts:
        frames.append(pd.DataFrame({"u": user, "i": item, "event_ts": ts, "event_type": kind}))
    df = pd.concat(frames, ignore_index=True)
    order = {"impression": 0, "click": 1, "fav": 2, "cart": 3, "purchase": 4}
    df["rank"] = df["event_type"].map(order)
    df = df.sort_values(["u", "event_ts", "rank", "i"], kind="stable")
    is_purchase = df["event_type"].to_numpy() == "purchase"
    return pd.DataFrame(
        {
            "user_id": (b.users.ids[df["u"].to_numpy()] + 1).astype(str),
            "item_id": (df["i"].to_numpy() + 1).astype(str),
            "category_id": (world.item_cat[df["i"].to_numpy()] + 1).astype(str),
            "event_type": df["event_type"].to_numpy(),
            "event_ts": df["event_ts"].to_numpy(dtype=np.int64),
            "quantity": np.where(is_purchase, 1, None),
            "price": np.where(is_purchase, world.item_price[df["i"].to_numpy()], None),
        }
    )


def impressions_truth(world: World, b: Block) -> pd.DataFrame:
    """Ground truth per impression: the true click probability, and for clicked impressions the
    true purchase probability; plus the true factors behind them. Joins to the log on
    (user_id, item_id, impression_ts), the click on impression_ts + 1."""
    return pd.DataFrame(
        {
            "user_id": (b.users.ids[b.imp_user] + 1).astype(str),
            "item_id": (b.imp_item + 1).astype(str),
            "category_id": (world.item_cat[b.imp_item] + 1).astype(str),
            "impression_ts": b.imp_ts,
            "day": b.imp_day.astype(np.int32),
            "position": b.imp_position.astype(np.int32),
            "hour": b.imp_hour.astype(np.int32),
            "true_affinity": b.imp_affinity,
            "true_popularity": b.imp_popularity,
            "p_click": b.p_click,
            "clicked": b.clicked,
            "p_purchase": b.p_purchase,
            "purchased": b.purchased,
        }
    )


def repurchase_truth(world: World, g: GeneratorConfig, b: Block) -> pd.DataFrame:
    """True probability, as of each day D (given what happened before D), that the user buys the
    item (level 'item') or anything in the category (level 'category') again in
    [D, D + horizon). Covers the replenishment process; organic purchases of another item in
    the same category are not part of it (already-bought items are never shown again, so at
    item level it is the whole story)."""
    n_spawn = len(b.spawn_user)
    if n_spawn == 0:
        return _empty_repurchase()
    horizon = g.repurchase_horizon_days
    cycle = world.cat_cycle[b.spawn_cat]
    jitter = world.cat_jitter[b.spawn_cat]
    rows = []
    for day in range(1, g.days):
        live = b.spawn_day < day
        if not live.any():
            continue
        idx = np.nonzero(live)[0]
        age = day - b.spawn_day[idx]
        lo, hi = cycle[idx] - jitter[idx], cycle[idx] + jitter[idx]
        width = hi - lo + 1
        before = np.clip(np.minimum(age, hi + 1) - lo, 0, None) / width  # P(delay < age)
        within = np.clip(np.minimum(age + horizon, hi + 1) - np.maximum(age, lo), 0, None) / width
        landed = (b.spawn_lands[idx] >= 0) & (b.spawn_lands[idx] < day)
        prob = b.spawn_prob[idx]
        q = np.where(landed, 0.0, prob * within / np.maximum(1e-12, 1 - prob * before))
        frame = pd.DataFrame(
            {
                "u": b.spawn_user[idx],
                "i": b.spawn_item[idx],
                "c": b.spawn_cat[idx],
                "q": q,
                "q_item": q * g.repurchase_same_item,
                "last": b.spawn_day[idx],
            }
        )
        for level, key, col in (("item", ["u", "i", "c"], "q_item"), ("category", ["u", "c"], "q")):
            agg = (
                frame.assign(miss=np.log1p(-np.minimum(frame[col], 1 - 1e-12)))
                .groupby(key, sort=True)
                .agg(miss=("miss", "sum"), last=("last", "max"))
                .reset_index()
            )
            rows.append(
                pd.DataFrame(
                    {
                        "level": level,
                        "user_id": (b.users.ids[agg["u"].to_numpy()] + 1).astype(str),
                        "category_id": (agg["c"].to_numpy() + 1).astype(str),
                        "item_id": (agg["i"].to_numpy() + 1).astype(str) if level == "item" else None,
                        "day": np.int32(day),
                        "days_since_last_purchase": (day - agg["last"].to_numpy()).astype(np.int32),
                        "p_repurchase": 0.0 - np.expm1(agg["miss"].to_numpy()) + 0.0,
                        "consumable": world.cat_consumable[agg["c"].to_numpy()],
                    }
                )
            )
    return pd.concat(rows, ignore_index=True) if rows else _empty_repurchase()


def _empty_repurchase() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "level": [],
            "user_id": [],
            "category_id": [],
            "item_id": [],
            "day": [],
            "days_since_last_purchase": [],
            "p_repurchase": [],
            "consumable": [],
        }
    )


def users_table(g: GeneratorConfig, users: Users) -> pd.DataFrame:
    """The `users` side table: what a shop knows of its users (not the latent taste)."""
    level = np.digitize(users.activity, [g.sessions_per_user_day * 0.5, g.sessions_per_user_day * 2])
    return pd.DataFrame(
        {
            "user_id": (users.ids + 1).astype(str),
            "activity_level": np.array(["light", "regular", "heavy"])[level],
            "true_activity": users.activity,
            "true_price_sensitivity": users.price_sensitivity,
        }
    )
