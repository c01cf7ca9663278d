"""Next-token targets in both conventions: (ids, ids) with loss="next_token" (pathens shifts
them) and nanoGPT's (x, y), y = x shifted by one, with loss="next_token_aligned" (already
aligned). Each refuses the other's targets, which would be shifted twice (every position scored
against the token two ahead) or not at all (against itself). The oracle: a causal model's
position t sees tokens 0..t only, so (x, y) aligned and (ids, ids) on ids = x + one token make
the same predictions of the same tokens: same loss, errors, items and stream gradient."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pathens
from pathens import lesion


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    model = pathens.gpt(depth=2, width=16, heads=2, context=17, vocab_size=23).double().eval()
    ids = torch.randint(0, 23, (3, 17), generator=torch.Generator().manual_seed(1))
    ids[0, 5:9] = 7  # a repeated token inside a row: still told apart
    return pathens.wrap(model), ids


def test_targets_shifted_once_are_refused_by_next_token(lm):
    view, ids = lm
    x, y = ids[:, :-1], ids[:, 1:]
    for call in (lambda: lesion.evaluate(view, (x, y)),
                 lambda: pathens.path_gradients(view, x, y, progress=False),
                 lambda: lesion.delete_each(view, (x, y), progress=False)):
        with pytest.raises(pathens.PathensError, match=r"shifted by one token.*\(ids, ids\).*"
                                                       r"loss='next_token_aligned'"):
            call()


def test_aligned_targets_give_what_unshifted_targets_give(lm):
    view, ids = lm
    x, y = ids[:, :-1], ids[:, 1:]
    aligned = lesion.evaluate(view, (x, y), loss="next_token_aligned")
    shifted = lesion.evaluate(view, (ids, ids))
    # independently: the model's own logits on x against y, position by position
    with torch.no_grad():
        logits = view.model(x)
    direct = F.cross_entropy(logits.reshape(-1, 23), y.reshape(-1))
    assert aligned["n"] == shifted["n"] == y.numel() == 48
    assert aligned["loss"] == pytest.approx(float(direct), rel=1e-12)
    assert aligned["loss"] == pytest.approx(shifted["loss"], rel=1e-12)
    assert aligned["errors"] == shifted["errors"] == int((logits.argmax(-1) != y).sum())
    # the stream's gradient: ids's extra last position gets none, the rest is the same
    a = pathens.path_gradients(view, x, y, loss="next_token_aligned", progress=False)
    s = pathens.path_gradients(view, ids, ids, progress=False)
    np.testing.assert_allclose(a.total, s.total, rtol=1e-10)
    assert a.residual < 1e-12 and a.gradient_norm == pytest.approx(s.gradient_norm, rel=1e-10)
    assert a.config["loss"] == "mean next_token_aligned over tokens"
    each = lesion.delete_each(view, (x, y), loss="next_token_aligned", progress=False)
    assert each.tokens and each.num_examples == 48 and "perplexity" in each.table()[0]
    assert each.rows[0]["loss"] == pytest.approx(aligned["loss"], rel=1e-12)


def test_aligned_loss_refuses_the_inputs_as_targets_and_ignores_padding(lm):
    view, ids = lm
    with pytest.raises(pathens.PathensError, match="targets are the inputs themselves.*"
                                                   "loss='next_token'"):
        lesion.evaluate(view, (ids[:, :-1], ids[:, :-1]), loss="next_token_aligned")
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[1, 3:] = -100  # ignored targets count for nothing
    got = lesion.evaluate(view, (x, y), loss="next_token_aligned")
    with torch.no_grad():
        logits = view.model(x)
    direct = F.cross_entropy(logits.reshape(-1, 23), y.reshape(-1), ignore_index=-100)
    assert got["n"] == 48 - 13 and got["loss"] == pytest.approx(float(direct), rel=1e-12)


def test_rows_of_one_repeated_token_and_partly_shifted_batches_are_not_refused(lm):
    view, ids = lm
    same = torch.full((2, 8), 4)  # both conventions at once: ambiguous, accepted
    assert lesion.evaluate(view, (same, same))["n"] == 14
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[2] = x[2]  # one row in the (ids, ids) convention: not every row shifted
    assert lesion.evaluate(view, (x, y))["n"] == 45
