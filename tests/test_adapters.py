"""The adapter mechanism, checked against hand-written models: several blocks per module, model
adapters with a captured or a given stem, contexts, token inputs and the next-token loss,
identity shortcuts found on the probe, and the probes wrap refuses. Every number is compared
with an independent computation (the model's own forward, autograd, brute force over paths)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pathens
from pathens import lesion, paths
from nets import VARIANTS, batch, small_resnet


# ---- a user's own small GPT: positions built with torch.arange (torch.fx cannot trace it) ----

class Layer(nn.Module):
    """Pre-LN: x + attn(ln1(x)), then x + mlp(ln2(x)); causal attention, dims (N, T, d)."""

    def __init__(self, d, heads=2):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def attn(self, x, mask=None):
        N, T, d = x.shape
        q, k, v = self.qkv(x).view(N, T, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))            # (N, heads, T, d/heads)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        allowed = causal if mask is None else causal & mask[:, None, None, :].bool()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(y.transpose(1, 2).reshape(N, T, d))

    def mlp(self, x):
        return self.fc2(F.gelu(self.fc1(x)))

    def forward(self, x, mask=None):
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab=11, d=8, n=3, context=16):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.layers = nn.ModuleList(Layer(d) for _ in range(n))
        self.ln, self.out = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, ids, attention_mask=None):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for layer in self.layers:
            x = layer(x, mask=attention_mask)
        return self.out(self.ln(x))


@pathens.register_block(Layer)
def layer_parts(layer):
    return [pathens.BlockParts(name="attn", context=True,
                               branch=lambda x, ctx: layer.attn(layer.ln1(x), ctx.get("mask"))),
            pathens.BlockParts(name="mlp", branch=lambda x: layer.mlp(layer.ln2(x)))]


@pathens.register_model(TinyGPT)
def tiny_gpt_parts(model):
    return pathens.ModelParts(blocks=list(model.layers), head=lambda h: model.out(model.ln(h)),
                              loss="next_token", vocab_size=11, max_length=16)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return TinyGPT().double().eval()


def ids(n=3, t=7, seed=0):
    return torch.randint(0, 11, (n, t), generator=torch.Generator().manual_seed(seed))


def next_token_loss(logits, ids):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def test_two_blocks_per_module_and_a_captured_stem():
    model, x = tiny_gpt(), ids()
    view = pathens.wrap(model, example_input=x)
    assert [b.name for b in view.blocks] == ["layers.0.attn", "layers.0.mlp", "layers.1.attn",
                                             "layers.1.mlp", "layers.2.attn", "layers.2.mlp"]
    assert view.layers == [[0, 1], [2, 3], [4, 5]] and view.loss == "next_token"
    assert [b.layer for b in view.blocks] == [0, 0, 1, 1, 2, 2]
    torch.testing.assert_close(view(x), model(x), rtol=0, atol=1e-12)
    # the stem is the model's own forward up to layers.0: the embeddings
    h = view.stem(x)
    torch.testing.assert_close(h, model.tok(x) + model.pos(torch.arange(7)), rtol=0, atol=0)


def test_next_token_gradient_by_length_equals_brute_force_and_autograd():
    model, x = tiny_gpt(), ids()
    view = pathens.wrap(model, example_input=x)
    res = pathens.path_gradients(view, x, x, components=True, progress=False)
    h0 = (model.tok(x) + model.pos(torch.arange(7))).detach().requires_grad_(True)
    hh = h0
    for layer in model.layers:
        hh = layer(hh)
    g = torch.autograd.grad(next_token_loss(model.out(model.ln(hh)), x), h0)[0]
    torch.testing.assert_close(res.components.sum(0), g, rtol=1e-10, atol=1e-15)
    assert res.residual < 1e-12 and res.config["items"] == 3 * 6
    n = view.num_blocks  # 6 blocks: 64 paths
    brute = [torch.zeros_like(h0) for _ in range(n + 1)]
    for mask in paths.enumerate_paths(n):
        start = view.stem(x).detach().requires_grad_(True)
        out = view.run_from(start, path=mask)
        brute[int(mask.sum())] += torch.autograd.grad(next_token_loss(out, x), start)[0]
    for k in range(n + 1):
        torch.testing.assert_close(res.components[k], brute[k], rtol=1e-9, atol=1e-15)


def test_context_carries_the_attention_mask():
    model, x = tiny_gpt(), ids()
    mask = torch.ones_like(x)
    mask[0, 4:] = 0  # the first sequence is padded after 4 tokens
    inputs = dict(ids=x, attention_mask=mask)
    view = pathens.wrap(model, example_input=inputs)
    torch.testing.assert_close(view.run(inputs), model(**inputs), rtol=0, atol=1e-12)
    deleted = view.run(inputs, deleted=["layers.1.attn"])
    by_hand = copy.deepcopy(model)
    by_hand.layers[1].attn = lambda x, mask=None: torch.zeros_like(x)
    torch.testing.assert_close(deleted, by_hand(**inputs), rtol=0, atol=1e-12)
    # next-token metrics skip padding: targets where the mask is 0 count for nothing
    row = lesion.evaluate(view, (inputs, x))
    logits = model(**inputs)
    keep = mask[:, 1:].bool()
    lg, tg = logits[:, :-1][keep], x[:, 1:][keep]
    assert row["n"] == int(keep.sum()) == 15
    assert row["errors"] == int((lg.argmax(-1) != tg).sum())
    assert row["loss"] == pytest.approx(float(F.cross_entropy(lg, tg).detach()), rel=1e-12)


def test_lesions_by_name_by_module_and_by_layer():
    model, x = tiny_gpt(), ids()
    view = pathens.wrap(model, example_input=x)
    assert view.indices(["layers.1"]) == [2, 3] and view.indices("layers.2.mlp") == [5]
    by_hand = copy.deepcopy(model)
    by_hand.layers[1].forward = lambda x, mask=None: x  # a whole layer deleted: both sublayers
    torch.testing.assert_close(view.run(x, deleted=["layers.1"]), by_hand(x), rtol=0, atol=1e-12)
    each = lesion.delete_each(view, (x, x), unit="layer", progress=False)
    assert [r["deleted"] for r in each.rows[1:]] == [[0, 1], [2, 3], [4, 5]]
    assert each.config["unit"] == "layer" and each.config["items"] == "tokens"
    rand = lesion.delete_random(view, (x, x), ks=[2], trials=3, unit="layer", progress=False)
    assert all(len(r["deleted"]) == 4 for r in rand.rows[1:])
    swap = lesion.reorder(view, (x, x), swaps=[1], trials=2, unit="layer", progress=False)
    for r in swap.rows[1:]:  # whole layers move: attention stays before its own MLP
        order = r["order"]
        assert all(order[2 * p + 1] == order[2 * p] + 1 for p in range(3))
    with pytest.raises(pathens.PathensError, match="no block or module is named 'layers.9'"):
        view.run(x, deleted=["layers.9"])


def test_token_inputs_are_checked_against_the_model():
    model, x = tiny_gpt(), ids()
    view = pathens.wrap(model, example_input=x)
    with pytest.raises(pathens.PathensError, match="vocabulary has 11 tokens"):
        pathens.path_gradients(view, x + 20, x + 20, progress=False)
    long = ids(t=17)
    with pytest.raises(pathens.PathensError, match="longer than the model's context of 16"):
        lesion.evaluate(view, (long, long))
    with pytest.raises(pathens.PathensError, match=r"targets must have shape \(3, 7\)"):
        pathens.path_gradients(view, x, x[:, :5], progress=False)


def test_given_stem_and_a_broken_chain_are_named():
    class Skips(TinyGPT):  # layer 1 is fed the embeddings, not layer 0's output
        def forward(self, ids, attention_mask=None):
            e = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
            x = self.layers[0](e)
            x = self.layers[2](self.layers[1](e) + 0 * x)
            return self.out(self.ln(x))

    torch.manual_seed(0)
    with pytest.raises(pathens.WrapError,
                       match="chain breaks between layers.0 and layers.1"):
        pathens.wrap(Skips().double(), example_input=ids())

    class GivenStem(TinyGPT):
        pass

    pathens.register_model(GivenStem, lambda m: pathens.ModelParts(
        blocks=list(m.layers), head=lambda h: m.out(m.ln(h)), loss="next_token",
        stem=lambda ids: m.tok(ids) + m.pos(torch.arange(ids.shape[1]))))
    torch.manual_seed(0)
    model = GivenStem().double().eval()
    view = pathens.wrap(model, example_input=ids())
    torch.testing.assert_close(view(ids()), model(ids()), rtol=0, atol=1e-12)

    class WrongStem(TinyGPT):
        pass

    pathens.register_model(WrongStem, lambda m: pathens.ModelParts(
        blocks=list(m.layers), head=lambda h: m.out(m.ln(h)), stem=lambda ids: m.tok(ids)))
    with pytest.raises(pathens.WrapError, match="the stem of WrongStem"):
        pathens.wrap(WrongStem(), example_input=ids())


def test_sublayers_that_do_not_compose_are_named():
    class Odd(Layer):
        pass

    class OddGPT(TinyGPT):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Odd(8) for _ in range(3))

    pathens.register_block(Odd, lambda layer: [  # forgets ln2 in the MLP sublayer
        pathens.BlockParts(name="attn", branch=lambda x: layer.attn(layer.ln1(x))),
        pathens.BlockParts(name="mlp", branch=lambda x: layer.mlp(x))])
    with pytest.raises(pathens.WrapError, match=r"module layers.0 \(Odd\): its 2 blocks "
                                                r"\(attn, mlp\), composed, do not reproduce"):
        pathens.wrap(OddGPT(), example_input=ids())


# ---- identity shortcuts decided on the probe (issue 11, item 1) ---------------------------

class ModuleShortcutBlock(nn.Module):
    """relu(shortcut(x) + conv(x)), its shortcut always a module: an empty nn.Sequential where
    the shape is kept (the identity), a 1x1 projection where it changes."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1)
        self.shortcut = nn.Sequential() if stride == 1 and cin == cout else \
            nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x):
        return F.relu(self.shortcut(x) + self.conv(x))


pathens.register_block(ModuleShortcutBlock, lambda b: pathens.BlockParts(
    branch=b.conv, shortcut=b.shortcut, post=F.relu, layers=(b.conv,)))


def module_shortcut_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ModuleShortcutBlock(4, 4),
                         ModuleShortcutBlock(4, 4), ModuleShortcutBlock(4, 8, 2),
                         ModuleShortcutBlock(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3)).double().eval()


def test_identity_shortcut_modules_are_found_on_the_probe():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    view = pathens.wrap(module_shortcut_net(), example_input=x)
    assert [b.downsample for b in view.blocks] == [False, False, True, False]
    assert view.blocks[0].identity_by == "the shortcut module returns its input on the probe"
    assert view.blocks[2].identity_by == "the shortcut module changes its input on the probe"
    assert "identity (the shortcut module returns its input on the probe)" in repr(view.blocks[0])
    assert "3 identity shortcuts found on the probe" in repr(view)
    assert lesion.random_pool(view) == [0, 1, 3]
    rand = lesion.delete_random(view, (x, torch.tensor([0, 2])), ks=[1], trials=2, progress=False)
    assert len(rand.rows) == 3
    res = pathens.path_gradients(view, x, torch.tensor([0, 2]), components=True, progress=False)
    assert res.residual < 1e-12


# ---- probes that cannot prove anything (issue 11, items 3 and 8) --------------------------

def test_probes_that_cannot_prove_anything_are_refused():
    class Forgets(nn.Module):  # an adapter that forgets a block's scale
        pass

    model = small_resnet(20, **VARIANTS[4][1])  # SkipInit: alpha in [0.3, 0.9]
    x, _ = batch(2)
    with pytest.raises(pathens.WrapError, match="empty"):
        pathens.wrap(model, example_input=x[:0])
    with pytest.raises(pathens.WrapError, match="NaN or infinite"):
        pathens.wrap(model, example_input=torch.full_like(x, float("nan")))
    with pytest.raises(pathens.WrapError, match="must be a batch: a tensor or a dict"):
        pathens.wrap(model, example_input=[1, 2])


def test_a_probe_in_another_dtype_is_cast():
    model = small_resnet(20, **VARIANTS[0][1])  # float64
    x, _ = batch(2)
    view = pathens.wrap(model, example_input=x.float())
    assert view.param.dtype == torch.float64
    torch.testing.assert_close(view(x), model(x), rtol=0, atol=1e-12)


def test_a_model_on_the_meta_device_is_refused():
    model = pathens.cifar_resnet(8).to("meta")
    with pytest.raises(pathens.WrapError, match="meta device"):
        pathens.wrap(model)


# ---- errors that point the right way (issue 11, item 4) -----------------------------------

class PlainLayer(nn.Module):
    def __init__(self, d=6):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return F.relu(self.fc(x))


def plain_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), PlainLayer(), PlainLayer(), nn.Linear(6, 3)).double()


def test_a_plain_block_registered_as_residual_gets_the_hint():
    pathens.register_block(PlainLayer, lambda b: pathens.BlockParts(branch=b.fc, post=F.relu))
    x = torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(pathens.WrapError, match=r"a plain layer; return BlockParts\(\.\.\., "
                                                r"residual=False\)"):
        pathens.wrap(plain_net(), example_input=x, allow_plain=True)
    pathens.register_block(PlainLayer, lambda b: pathens.BlockParts(branch=b.fc, post=F.relu,
                                                                    residual=False))
    view = pathens.wrap(plain_net(), example_input=x, allow_plain=True)
    assert not view.residual


def test_an_inherited_adapter_is_named_by_its_registered_class():
    class Sub(PlainLayer):
        pass

    pathens.register_block(PlainLayer, lambda b: pathens.BlockParts(branch=b.fc))  # wrong
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), Sub(), Sub(), nn.Linear(6, 3))
    with pytest.raises(pathens.WrapError, match=r"registered for [\w.]*PlainLayer$"):
        pathens.wrap(net, example_input=torch.randn(2, 5))


def test_plain_shape_changing_deletion_and_nothing_to_reorder_are_pathens_errors():
    torch.manual_seed(0)
    model = pathens.cifar_resnet(8, skip=False, width=4).double().eval()  # 3 layers, 2 change shape
    view = pathens.wrap(model, allow_plain=True)
    x, y = batch(2)
    with pytest.raises(pathens.PathensError, match="plain layer that changes the shape"):
        view.run(x, deleted=[1])
    with pytest.raises(pathens.PathensError, match="nothing to reorder"):
        lesion.reorder(view, (x, y), progress=False)


# ---- lesion arguments (issue 11, items 8 and 9) -------------------------------------------

def test_repeated_counts_and_bad_data_are_refused():
    view = pathens.wrap(small_resnet(20, **VARIANTS[0][1]))
    x, y = batch(4)
    with pytest.raises(pathens.PathensError, match="ks lists 2 more than once"):
        lesion.delete_random(view, (x, y), ks=[2, 2], trials=3, progress=False)
    with pytest.raises(pathens.PathensError, match="swaps lists 1 more than once"):
        lesion.reorder(view, (x, y), swaps=[1, 1], progress=False)
    with pytest.raises(pathens.PathensError, match="seed must be an integer in"):
        lesion.delete_random(view, (x, y), ks=[1], seed=-1, progress=False)
    with pytest.raises(pathens.PathensError, match="list of \\(inputs, targets\\) batches"):
        lesion.evaluate(view, [1, 2, 3])


# ---- path-gradient arguments and numerics (issue 11, items 6, 9 and 10) -------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(tol=1.0), "tol must be a number in"), (dict(tol=float("inf")), "tol must be"),
    (dict(tol=-1e-3), "tol must be"), (dict(method="sampled", samples_per_length=2.5),
                                       "samples_per_length must be an integer >= 2"),
    (dict(loss="perplexity"), "unknown loss 'perplexity'"),
])
def test_path_gradient_arguments_are_checked(kwargs, match):
    view = pathens.wrap(small_resnet(14, **VARIANTS[0][1]))
    x, y = batch(2)
    with pytest.raises(pathens.PathensError, match=match):
        pathens.path_gradients(view, x, y, progress=False, **kwargs)


def test_sampled_norms_do_not_underflow_in_float32():
    """Long paths of a deep net carry gradients whose squares underflow float32: the float32
    result must equal the float64 one, not be zero."""
    model64 = small_resnet(20, **VARIANTS[0][1])
    with torch.no_grad():  # scale every branch down: long paths become tiny
        for m in model64.modules():
            if isinstance(m, pathens.models.BasicBlock):
                m.bn2.weight.mul_(1e-3)
    model32 = copy.deepcopy(model64).float()
    x, y = batch(2)
    kw = dict(method="sampled", samples_per_length=2, seed=0, progress=False)
    r64 = pathens.path_gradients(pathens.wrap(model64), x, y, **kw)
    r32 = pathens.path_gradients(pathens.wrap(model32), x.float(), y, **kw)
    # the longest paths' gradients are representable in float32, their squares are not
    assert 1e-35 < r64.per_path[-1] < 1e-20
    np.testing.assert_allclose(r32.per_path, r64.per_path, rtol=1e-3)


def test_lengths_with_one_path_have_no_sampling_error():
    view = pathens.wrap(small_resnet(14, **VARIANTS[0][1]))
    x, y = batch(3)
    res = pathens.path_gradients(view, x, y, method="sampled", samples_per_length=4, seed=0,
                                 progress=False)
    assert res.per_path_se[0] == 0.0 and res.per_path_se[-1] == 0.0
    assert (res.per_path_se[1:-1] > 0).all()
    # with random batches, the single path of length 0 is measured on other examples each time
    sub = pathens.path_gradients(view, x, y, method="sampled", samples_per_length=4, seed=0,
                                 batch_size=2, progress=False)
    assert sub.per_path_se[0] > 0


def test_residual_is_against_the_models_own_gradient():
    """In float32 the sweep runs in channels_last; its residual is measured against the
    gradient the model computes in its own layout (a hook makes block 0's input a leaf)."""
    model = small_resnet(20, **VARIANTS[0][1]).float()
    x, y = batch(4)
    x = x.float()
    view = pathens.wrap(model)
    res = pathens.path_gradients(view, x, y, components=True, progress=False)
    h0 = model.stem(x).detach().requires_grad_(True)
    own = torch.autograd.grad(F.cross_entropy(model.head(_blocks(model, h0)), y), h0)[0]
    err = float((res.components.sum(0) - own).norm() / own.norm())
    assert res.residual == pytest.approx(err, rel=1e-3, abs=1e-9)
    assert res.gradient_norm == pytest.approx(float(own.norm()), rel=1e-5)
    unchecked = pathens.path_gradients(view, x, y, check=False, progress=False)
    assert math.isnan(unchecked.residual)


def _blocks(model, h):
    for b in model.blocks:
        h = b(h)
    return h


def test_custom_loss_function():
    view = pathens.wrap(small_resnet(14, **VARIANTS[0][1]))
    x, y = batch(3)
    mse = lambda logits, t: (logits - F.one_hot(t, 10).to(logits)).pow(2).sum(1).mean()
    res = pathens.path_gradients(view, x, y, loss=mse, components=True, progress=False)
    h0 = view.stem(x).detach().requires_grad_(True)
    g = torch.autograd.grad(mse(view.run_from(h0), y), h0)[0]
    torch.testing.assert_close(res.components.sum(0), g, rtol=1e-10, atol=1e-15)
    row = lesion.evaluate(view, (x, y), loss=mse)
    assert math.isnan(row["error"])
    assert row["loss"] == pytest.approx(float(mse(view(x), y)), rel=1e-12)


def test_language_model_lesions_report_perplexity():
    model, x = tiny_gpt(), ids()
    view = pathens.wrap(model, example_input=x)
    rand = lesion.delete_random(view, (x, x), ks=[1], trials=2, progress=False)
    rows = rand.table()
    assert all(r["perplexity"] == pytest.approx(math.exp(r["loss"])) for r in rows)
    summary = rand.summary()[0]
    assert summary["perplexity_mean"] == pytest.approx(
        np.mean([math.exp(r["loss"]) for r in rand.rows[1:]]))
    assert "18 tokens" in repr(rand)
