"""A batch's click list is padded in buckets that waste little, with the padding spread over the
batch's rows and items (issue 29), and the models compute what they computed with the first form of
the padding (all of it in the last row at item 0, up to a power of two), to rounding."""

from __future__ import annotations

import pytest
import torch

from evcf.batches import Batches, Clicks, DeviceCSR, clicks_of, pad_clicks, padded_size
from evcf.data.shapes import synthetic_matrix
from evcf.models import build_model
from evcf.optim import make_optimizer
from evcf.training import train_step


def old_pad_clicks(clicks: Clicks, n_rows: int) -> Clicks:
    """The first form, as evcf/batches.py had it: up to the next power of two (at least 64), every
    padding entry in the last row at item 0."""
    batch_row, cols, values = clicks
    n = batch_row.numel()
    n_pad = max(64, 1 << max(n - 1, 0).bit_length()) - n
    if not n_pad:
        return clicks
    return Clicks(torch.cat([batch_row, torch.full((n_pad,), n_rows - 1, dtype=batch_row.dtype)]),
                  torch.cat([cols, torch.zeros(n_pad, dtype=cols.dtype)]),
                  torch.cat([values, torch.zeros(n_pad, dtype=values.dtype)]))


def test_padded_sizes_by_hand():
    assert [padded_size(n) for n in (0, 1, 64)] == [64, 64, 64]
    assert padded_size(65) == 128 and padded_size(1000) == 1024  # steps of 64 below 2,048 clicks
    assert padded_size(2049) == 2176  # 4,096 / 32 = 128
    assert padded_size(34_000) == 34_816  # ML-20M at batch 500: steps of 2,048 (2.4% padding)
    assert padded_size(65_536) == 65_536 and padded_size(65_537) == 69_632  # steps of 4,096 from here
    assert padded_size(1_000_000) == 1_003_520  # at most 4,096


def test_padding_is_a_few_percent_in_steps_of_64_to_4096():
    sizes = [padded_size(n) for n in range(1, 300_000, 7)]
    assert all(s >= n for s, n in zip(sizes, range(1, 300_000, 7)))
    assert all(s % 64 == 0 for s in sizes)
    for n in [*range(1, 300_000, 7), 2 ** 20 + 1]:
        s = padded_size(n)
        assert s - n < (n / 16 if n > 1024 else 64), n  # beyond 1,024 clicks, less than 1/16 of them
        if n > 2 ** 17:
            assert s % 4096 == 0 and s - n < 4096
    assert sorted(sizes) == sizes  # more clicks never get a shorter list


@pytest.fixture(scope="module")
def ml20m_like() -> DeviceCSR:
    """2,000 users with ML-20M's items and clicks per user: batches of 500 hold ~34K clicks."""
    return DeviceCSR(synthetic_matrix(2_000, 20_108, 137_000, seed=3))


def test_a_batchs_padding_is_spread_over_its_rows_and_items(ml20m_like):
    rows = torch.arange(500)
    n = int(ml20m_like.row_nnz_host[:500].sum())
    plain = ml20m_like.batch(rows, pad=False).clicks
    padded = ml20m_like.batch(rows).clicks
    size = padded.batch_row.numel()
    assert size == padded_size(n) and 0 < size - n < n / 16
    is_pad = padded.values == 0
    assert int(is_pad.sum()) == size - n
    per_row = torch.bincount(padded.batch_row[is_pad], minlength=500)
    per_item = torch.bincount(padded.cols[is_pad], minlength=20_108)
    # no row and no item holds more than a few percent of the padding (here: one share each, +1)
    assert int(per_row.max()) <= -(-(size - n) // 500) and int(per_row.max()) / (size - n) < 0.01
    assert int(per_item.max()) / (size - n) < 0.01
    # row-major (each row's entries contiguous: embedding_bag's bags), the clicks in their order
    assert bool((padded.batch_row[1:] >= padded.batch_row[:-1]).all())
    assert torch.equal(padded.batch_row[~is_pad], plain.batch_row) and torch.equal(padded.cols[~is_pad], plain.cols)
    assert bool((padded.values[~is_pad] == 1).all())


def test_padding_on_a_tiny_batch_and_an_empty_one():
    x = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    clicks = clicks_of(x)
    assert clicks.batch_row.numel() == 64
    # 61 entries of padding: 21, 20, 20 after each row's clicks
    assert torch.bincount(clicks.batch_row).tolist() == [2 + 21, 1 + 20, 0 + 20]
    assert clicks.batch_row[:3].tolist() == [0, 0, 0] and clicks.cols[:2].tolist() == [1, 2]
    assert clicks.values.sum() == 3 and set(clicks.cols.tolist()) == {0, 1, 2}
    empty = pad_clicks(Clicks(*(torch.zeros(0, dtype=torch.long),) * 2, torch.zeros(0)), 4, 10)
    assert torch.bincount(empty.batch_row).tolist() == [16] * 4 and float(empty.values.abs().sum()) == 0.0


SMALL = {
    "mult-vae": ({"hidden_size": 16, "latent_size": 6}, "adam"),
    "vamp": ({"hidden_size": 16, "latent_size": 6, "n_pseudo": 5}, "adam-normgrad"),
    "hvamp-gated": ({"hidden_size": 16, "z1_size": 6, "z2_size": 5, "n_pseudo": 5, "num_layers": 2},
                    "adam-normgrad"),
    "recvae": ({"hidden_size": 16, "latent_size": 6}, "adam"),
}


@pytest.mark.parametrize("name,likelihood", [(n, lik) for n in SMALL for lik in ("multinomial", "bernoulli")
                                             if n != "recvae" or lik == "multinomial"])  # RecVAE: multinomial only
def test_a_step_with_the_spread_padding_gives_the_old_paddings_losses_and_gradients(name, likelihood):
    """Eval mode (no dropout, no sampling: the same draws whatever the list's layout), float64:
    the loss, its parts and every gradient equal the first form's to rounding."""
    data = DeviceCSR(synthetic_matrix(120, 300, 4000, seed=4))
    hparams = {**SMALL[name][0], **({"likelihood": likelihood} if name != "recvae" else {})}
    rows = torch.arange(40)
    batch = data.batch(rows, torch.float64)
    unpadded = data.batch(rows, torch.float64, pad=False).clicks
    old = old_pad_clicks(unpadded, 40)
    assert old.batch_row.numel() != batch.clicks.batch_row.numel() or not torch.equal(old.batch_row,
                                                                                        batch.clicks.batch_row)
    results = []
    for clicks in (old, batch.clicks):
        torch.manual_seed(0)
        model = build_model(name, 300, **hparams).double().eval()
        parts = model.loss(batch.x, 0.3, clicks)
        parts.loss.backward()
        results.append((parts, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (old_parts, old_grads), (new_parts, new_grads) = results
    for field in ("loss", "nll", "kl"):
        torch.testing.assert_close(getattr(new_parts, field), getattr(old_parts, field), rtol=1e-12, atol=1e-12)
    assert old_grads.keys() == new_grads.keys() and old_grads
    for key in old_grads:
        torch.testing.assert_close(new_grads[key], old_grads[key], rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", ["mult-vae", "vamp"])
def test_two_epochs_with_either_padding_train_the_same_model(name):
    """A fixed-seed run of two epochs (eval mode, float32, the recipe's optimizer): the losses and
    the parameters after it match the first form's to float32 rounding."""
    data = DeviceCSR(synthetic_matrix(110, 200, 2400, seed=5))
    hparams, optimizer = SMALL[name]
    runs = []
    for old in (True, False):
        torch.manual_seed(0)
        model = build_model(name, 200, **hparams).eval()
        opt = make_optimizer(optimizer, model.parameters(), 1e-3)
        losses = []
        for epoch in range(2):
            order = torch.randperm(110, generator=torch.Generator().manual_seed(epoch))
            for batch in Batches(data, order, 32):
                if old:
                    unpadded = clicks_of(batch.x, pad=False)
                    batch = batch._replace(clicks=old_pad_clicks(unpadded, batch.x.shape[0]))
                losses.append(train_step(model, opt, batch, 0.2))
        runs.append((torch.stack(losses), [p.detach().clone() for p in model.parameters()]))
    (old_losses, old_params), (new_losses, new_params) = runs
    torch.testing.assert_close(new_losses, old_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(new_params, old_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
