"""The blocked exact top-M scan equals a full torch.topk, on every path through it."""

from __future__ import annotations

import pytest
import torch

from mtl.recommend import topm_kernel
from mtl.recommend.top_m import blocked_top_m, retrieval_flops


def _vectors(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def _assert_exact(users: torch.Tensor, items: torch.Tensor, m: int, block: int) -> None:
    scores, rows = blocked_top_m(users, items, m, block)
    expected_scores, expected_rows = torch.topk(users @ items.T, min(m, items.shape[0]), dim=1)
    assert rows.shape == expected_rows.shape
    assert torch.equal(rows.sort(dim=1).values, expected_rows.sort(dim=1).values)  # the same items
    torch.testing.assert_close(scores.sort(dim=1).values, expected_scores.sort(dim=1).values, rtol=0, atol=1e-6)
    # each score is the inner product of its item
    torch.testing.assert_close(scores, (users.unsqueeze(1) * items[rows]).sum(-1), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "n_items, m, block",
    [
        (5000, 50, 256),  # many blocks, the sampled guess holds
        (5003, 50, 256),  # a ragged last block
        (5000, 300, 64),  # m above the block size
        (40, 100, 8),  # m above the catalogue: every item, ordered
        (200, 20, 1000),  # one block: a plain topk
    ],
)
def test_equals_full_topk(n_items, m, block):
    _assert_exact(_vectors(64, 16, 1), _vectors(n_items, 16, 2), m, block)


def test_a_guess_that_is_too_high_falls_back_to_an_exact_scan():
    # The strided sample (every 10th item) holds the best items of every user, so the sampled
    # threshold leaves fewer than m items above it: the second scan must still be exact.
    users = _vectors(32, 8, 3)
    items = _vectors(1000, 8, 4) * 0.5
    direction = torch.nn.functional.normalize(users.mean(0), dim=0)
    items[::10] = direction + 0.01 * _vectors(100, 8, 5)
    _assert_exact(users, items, 150, 100)


def test_ties_at_the_last_place_keep_one_of_the_tied_items():
    users = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[0.5, 0.0], [1.0, 0.0], [0.5, 1.0], [0.2, 0.0], [0.1, 0.0]])
    scores, rows = blocked_top_m(users, items, 2, 2)
    assert sorted(scores[0].tolist()) == [0.5, 1.0]
    assert 1 in rows[0].tolist() and len({0, 2} & set(rows[0].tolist())) == 1


def test_flops_and_bad_arguments():
    assert retrieval_flops(3, 5, 4) == 120
    with pytest.raises(ValueError, match="at least 1"):
        blocked_top_m(_vectors(2, 4, 0), _vectors(10, 4, 1), 0, 4)
    scores, rows = blocked_top_m(torch.empty(0, 4), _vectors(10, 4, 1), 3, 4)
    assert scores.shape == rows.shape == (0, 3)


def test_a_catalogue_in_rising_order_fills_the_buffer_again_and_again():
    # Each item beats every earlier one: every item above the sampled guess is a hit when it
    # arrives (about four times m of them), so each user's buffer of 2m slots fills and is cut
    # back to its best m more than once.
    users = torch.tensor([[1.0, 0.0], [0.5, 0.0]])
    items = torch.stack([torch.linspace(-1.0, 1.0, 3000), torch.zeros(3000)], dim=1)
    scores, rows = blocked_top_m(users, items, 40, 128)
    for user in range(2):
        assert sorted(rows[user].tolist()) == list(range(2960, 3000))
    _assert_exact(users, items, 40, 128)


def test_kth_best_is_the_kth_largest_of_each_row():
    scores = _vectors(50, 300, 6).numpy()
    for k in (1, 7, 300):
        expected = torch.topk(torch.from_numpy(scores), k, dim=1).values[:, -1].numpy()
        assert (topm_kernel.kth_best(scores, k) == expected).all()
