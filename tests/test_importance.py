"""ShortGPT's Block Influence and Gromov et al.'s angular distance, each against a direct
computation from the model's own hidden states (Hugging Face's output_hidden_states and forward
hooks on the model's modules, never the view), on a small float64 GPT-2 and CIFAR ResNet."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pathens
from pathens.measure.importance import AngularDistance, BlockInfluence, angular_distance, block_influence
from nets import small_resnet

transformers = pytest.importorskip("transformers")
VOCAB, LAYERS = 64, 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def gpt2(one_thread):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=LAYERS, n_embd=32, n_head=4, vocab_size=VOCAB,
                                     n_positions=32, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    return model, pathens.wrap(model)


def ids(n=3, t=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, t), generator=g)


def right_padded():
    x = ids(3, 10, seed=1)
    mask = torch.ones_like(x)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return x, mask


def hf_states(model, x, mask=None):
    """From the model itself: layer inputs x_0 .. x_{L-1} (output_hidden_states), the last
    layer's raw output x_L (a hook: HF's last hidden state is after ln_f), and inside each
    layer the stream between its sublayers, x + attn(ln_1(x)) (a hook on attn's output)."""
    raw, attn = {}, {}
    hooks = [model.transformer.h[-1].register_forward_hook(
        lambda m, a, out: raw.__setitem__("h", out if torch.is_tensor(out) else out[0]))]
    for i, layer in enumerate(model.transformer.h):
        hooks.append(layer.attn.register_forward_hook(
            lambda m, a, out, i=i: attn.__setitem__(i, out[0])))
    try:
        with torch.no_grad():
            out = model(input_ids=x, attention_mask=mask, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    layers = list(out.hidden_states[:LAYERS]) + [raw["h"]]
    blocks = []  # x_0, mid_0, x_1, mid_1, ..., x_L: the states between the 8 sublayers
    for i in range(LAYERS):
        blocks += [layers[i], layers[i] + attn[i]]
    return layers, blocks + [layers[-1]]


def mean_cos(a, b, keep=None):
    """F.cosine_similarity per token, averaged over the tokens `keep` marks (default all)."""
    c = F.cosine_similarity(a, b, dim=-1)
    return float(c[keep].mean() if keep is not None else c.mean())


def mean_angle(a, b, keep=None):
    d = torch.arccos(F.cosine_similarity(a, b, dim=-1).clamp(-1, 1)) / math.pi
    return float(d[keep].mean() if keep is not None else d.mean())


# ---- Block Influence -------------------------------------------------------------------------

def test_block_influence_by_layer_and_by_block_equals_hidden_states(gpt2):
    model, view = gpt2
    x = ids()
    layers, blocks = hf_states(model, x)
    res = block_influence(view, x)
    assert isinstance(res, BlockInfluence) and res.unit == "layer"
    assert res.names == tuple(f"transformer.h.{i}" for i in range(LAYERS))
    assert res.blocks == tuple((2 * i, 2 * i + 1) for i in range(LAYERS))
    want = [1 - mean_cos(layers[i], layers[i + 1]) for i in range(LAYERS)]
    np.testing.assert_allclose(res.influence, want, rtol=1e-10, atol=1e-13)
    assert res.num_items == 30 and res.undefined.tolist() == [0] * LAYERS
    sub = block_influence(view, (x, x), unit="block")  # an (inputs, targets) pair
    assert sub.names[:2] == ("transformer.h.0.attn", "transformer.h.0.mlp")
    want = [1 - mean_cos(blocks[i], blocks[i + 1]) for i in range(2 * LAYERS)]
    np.testing.assert_allclose(sub.influence, want, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(sub.cosine, 1 - sub.influence, rtol=1e-14)
    assert sub.ranking() == sorted(range(2 * LAYERS), key=lambda i: want[i])


def test_block_influence_leaves_out_padding(gpt2):
    """Padded positions do not count (and their token ids change nothing)."""
    model, view = gpt2
    x, mask = right_padded()
    layers, _ = hf_states(model, x, mask)
    keep = mask == 1
    res = block_influence(view, {"input_ids": x, "attention_mask": mask})
    want = [1 - mean_cos(layers[i], layers[i + 1], keep) for i in range(LAYERS)]
    np.testing.assert_allclose(res.influence, want, rtol=1e-10, atol=1e-13)
    assert res.num_items == 10 + 6 + 3
    other = x.masked_fill(mask == 0, 7)
    again = block_influence(view, {"input_ids": other, "attention_mask": mask})
    np.testing.assert_allclose(again.influence, res.influence, rtol=1e-12)


def test_batches_stream_and_add_up_exactly(gpt2):
    """A loader of uneven batches gives the one-batch result (sums, divided once)."""
    _, view = gpt2
    x = ids(5, 8, seed=2)
    whole = block_influence(view, x, unit="block")
    loader = [(x[:2], x[:2]), (x[2:3], x[2:3]), (x[3:], x[3:])]
    parts = block_influence(view, loader, unit="block")
    np.testing.assert_allclose(parts.influence, whole.influence, rtol=1e-12)
    small = block_influence(view, x, unit="block", batch_size=2)
    np.testing.assert_allclose(small.influence, whole.influence, rtol=1e-12)
    assert parts.num_items == small.num_items == whole.num_items == 40
    ad = angular_distance(view, loader, n=3, unit="block")
    np.testing.assert_allclose(ad.distance, angular_distance(view, x, 3, unit="block").distance,
                               rtol=1e-12)


# ---- angular distance --------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, LAYERS])
def test_angular_distance_equals_hidden_states(gpt2, n):
    model, view = gpt2
    x = ids()
    layers, _ = hf_states(model, x)
    res = angular_distance(view, x, n=n, positions="all")
    assert isinstance(res, AngularDistance)
    want = [mean_angle(layers[l], layers[l + n]) for l in range(LAYERS - n + 1)]
    np.testing.assert_allclose(res.distance, want, rtol=1e-9, atol=1e-12)
    assert res.starts.tolist() == list(range(LAYERS - n + 1))
    assert res.best == int(np.argmin(want))
    assert res.pruned == tuple(f"transformer.h.{i}" for i in range(res.best, res.best + n))
    assert all(0 <= d <= 1 for d in res.distance)


def test_angular_distance_of_the_last_real_token(gpt2):
    """positions="last": Gromov et al.'s protocol, each sequence's last real token only."""
    model, view = gpt2
    x, mask = right_padded()
    layers, blocks = hf_states(model, x, mask)
    last = mask.sum(1) - 1  # right padding: the last real token
    rows = torch.arange(3)
    res = angular_distance(view, {"input_ids": x, "attention_mask": mask}, n=2, unit="block",
                           positions="last")
    want = [mean_angle(blocks[l][rows, last], blocks[l + 2][rows, last])
            for l in range(2 * LAYERS - 1)]
    np.testing.assert_allclose(res.distance, want, rtol=1e-9, atol=1e-12)
    assert res.num_items == 3
    # left padding: the last real token is the sequence's last position
    left = torch.ones_like(mask)
    left[0, :4] = 0
    res = angular_distance(view, {"input_ids": x, "attention_mask": left}, n=1,
                           positions="last")
    layers, _ = hf_states(model, x, left)
    want = [mean_angle(layers[l][:, -1], layers[l + 1][:, -1]) for l in range(LAYERS)]
    np.testing.assert_allclose(res.distance, want, rtol=1e-9, atol=1e-12)
    # the default for a language model: Gromov et al.'s last token
    default = angular_distance(view, {"input_ids": x, "attention_mask": left}, n=1)
    np.testing.assert_allclose(default.distance, want, rtol=1e-9, atol=1e-12)
    assert default.config["positions"] == "last" and default.num_items == 3


# ---- a CNN: per spatial position over channels ---------------------------------------------------

def test_cnn_scores_per_spatial_position():
    """A post-activation CIFAR ResNet: the stream is (N, C, H, W); cosines per position over
    the C channels, zero vectors (all channels ReLU'd off) left out and counted; the
    downsampling blocks change the shape, so their score is NaN."""
    model = small_resnet(20, preact=False, shortcut="B", norm="bn")
    view = pathens.wrap(model)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    io = {}
    hooks = [b.module.register_forward_hook(
        lambda m, a, out, i=b.index: io.__setitem__(i, (a[0], out))) for b in view.blocks]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    res = block_influence(view, x)
    assert res.names == tuple(b.name for b in view.blocks)
    for b in view.blocks:
        a, out = io[b.index]
        if b.downsample:
            assert math.isnan(res.influence[b.index])
            continue
        na, no = a.norm(dim=1), out.norm(dim=1)
        ok = (na > 0) & (no > 0)
        c = (a * out).sum(1)[ok] / (na[ok] * no[ok])
        assert res.influence[b.index] == pytest.approx(1 - float(c.mean()), rel=1e-10)
        assert res.undefined[b.index] == int((~ok).sum())
    assert res.undefined.sum() > 0  # the test exercises zero vectors
    assert res.num_items == 3 * 8 * 8  # positions entering block 0
    assert res.ranking()[-2:] == [b.index for b in view.blocks if b.downsample]
    ad = angular_distance(view, x, n=2)
    down = {b.index for b in view.blocks if b.downsample}
    for l, d in enumerate(ad.distance):
        assert math.isnan(d) == any(l <= i < l + 2 for i in down)
    assert ad.best not in [l for l in range(len(ad.distance)) if math.isnan(ad.distance[l])]


# ---- results and bad input ---------------------------------------------------------------------

def test_result_files(gpt2, tmp_path):
    _, view = gpt2
    x = ids()
    bi = block_influence(view, x, unit="block")
    rows = bi.to_csv(tmp_path / "bi.csv").splitlines()
    assert rows[0] == "index,name,blocks,influence,cosine,count,undefined" and len(rows) == 9
    d = bi.to_dict()
    assert d["config"]["unit"] == "block" and d["config"]["num_examples"] == 3
    ad = angular_distance(view, x, n=2)
    assert ad.to_csv().splitlines()[0] == "start,first,last,distance,count,undefined"
    assert '"best"' in ad.to_json(tmp_path / "ad.json") and ad.to_dict()["config"]["n"] == 2


@pytest.mark.parametrize("call,match", [
    (lambda v, x: block_influence(v, x, unit="module"), "unit must be 'layer' or 'block'"),
    (lambda v, x: angular_distance(v, x, n=0), r"n must be an integer in 1\.\.4"),
    (lambda v, x: angular_distance(v, x, n=9, unit="layer"), r"1\.\.4"),
    (lambda v, x: angular_distance(v, x, positions="first"), "positions must be"),
    (lambda v, x: block_influence(v, x, feature_dim=0), "feature_dim must name"),
    (lambda v, x: block_influence(v, x[:0]), "empty"),
    (lambda v, x: block_influence(v, x + VOCAB), "vocabulary"),
    (lambda v, x: block_influence(v, ids(1, 40)), "longer than the model's context"),
    (lambda v, x: block_influence(v, iter([x])), "re-iterable"),
    (lambda v, x: block_influence(v, {"input_ids": x, "attention_mask": x[:, :4] * 0 + 1}),
     "attention_mask of shape"),
    (lambda v, x: block_influence(v, {"input_ids": x, "attention_mask": x * 0}),
     "every position is padding"),
])
def test_bad_input(gpt2, call, match):
    _, view = gpt2
    with pytest.raises(pathens.PathensError, match=match) as e:
        call(view, ids())
    assert "\n" not in str(e.value)
