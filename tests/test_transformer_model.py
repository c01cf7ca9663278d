"""pathens's own transformer (pathens.transformer) in every norm mode, checked against
independent computations: the model's own forward, brute force over all 2^(2 * layers) paths
by autograd, a next-token loss written out by hand, the closed form of ReZero at alpha = 0,
hand-edited models for deletions, and a checkpoint's reloaded logits."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import pathens
from pathens import paths
from pathens.models.checkpoints import load, save_checkpoint
from pathens.errors import CheckpointError, PathensError
from pathens.models.transformer import NORMS, gpt

V, T = 13, 6  # vocabulary, sequence length


def lively(norm, depth=2, seed=0, **kw):
    """A float64 model whose every path carries gradient: weights larger than GPT-2's init,
    LayerNorm affine parameters and ReZero's alphas away from 1 and 0."""
    torch.manual_seed(seed)
    model = gpt(depth=depth, width=8, heads=2, context=8, vocab_size=V, norm=norm, **kw).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.fill_(0.7)
            elif "pre_" in name or "post_" in name or "ln_f" in name:
                p.add_(0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.4)
    return model.eval()


def ids_batch(n=3, seed=1):
    return torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(seed))


def next_token_loss(logits, ids):
    """Mean cross-entropy of position t's logits against token t+1, by hand."""
    logp = logits[:, :-1].log_softmax(-1)
    return -logp.gather(-1, ids[:, 1:, None]).mean()


def stream_grad(view, ids, path=None):
    h0 = view.stem(ids).detach().requires_grad_(True)
    return torch.autograd.grad(next_token_loss(view.run_from(h0, path=path), ids), h0)[0]


@pytest.mark.parametrize("norm", NORMS)
def test_view_reproduces_the_model_with_two_blocks_per_layer(norm):
    model = lively(norm, depth=3)
    view = pathens.wrap(model)
    assert [b.name for b in view.blocks] == [f"h.{i}.{s}" for i in range(3) for s in ("attn", "mlp")]
    assert view.layers == [[0, 1], [2, 3], [4, 5]] and view.loss == "next_token"
    assert (view.vocab_size, view.max_length, view.num_outputs) == (V, 8, V)
    ids = ids_batch()
    torch.testing.assert_close(view(ids), model(ids), rtol=0, atol=1e-12)
    expected_post = norm == "post"
    assert all((b.parts.post is not None) == expected_post for b in view.blocks)
    assert all((b.parts.scale is not None) == (norm == "rezero") for b in view.blocks)


@pytest.mark.parametrize("norm", NORMS)
def test_exact_decomposition_equals_brute_force_over_all_16_paths(norm):
    view = pathens.wrap(lively(norm))  # 2 layers: 4 blocks, 16 paths
    ids = ids_batch()
    res = pathens.path_gradients(view, ids, ids, components=True, progress=False)
    G = res.components
    assert G.dtype == torch.float64 and G.shape == (5, 3, T, 8)
    brute = [torch.zeros_like(G[0]) for _ in range(5)]
    for mask in paths.enumerate_paths(4):
        brute[int(mask.sum())] += stream_grad(view, ids, path=mask)
    for k in range(5):
        assert float(brute[k].norm()) > 1e-6 * float(brute[0].norm())  # every length matters
        torch.testing.assert_close(G[k], brute[k], rtol=1e-9, atol=1e-13, msg=f"length {k}")
    truth = stream_grad(view, ids)
    torch.testing.assert_close(G.sum(0), truth, rtol=1e-10, atol=1e-14)
    assert res.residual < 1e-12


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_next_token_loss_and_error_of_the_view_equal_a_direct_computation(norm):
    model = lively(norm)
    ids = ids_batch(4)
    row = pathens.lesion.evaluate(model, (ids, ids))
    with torch.no_grad():
        logits = model(ids)
    assert row["n"] == 4 * (T - 1)
    assert row["loss"] == pytest.approx(float(next_token_loss(logits, ids)), rel=1e-12)
    misses = (logits[:, :-1].argmax(-1) != ids[:, 1:]).double().mean()
    assert row["error"] == pytest.approx(float(misses), abs=1e-12)


def test_rezero_at_alpha_zero_is_the_identity_on_the_stream():
    torch.manual_seed(0)
    model = gpt(depth=3, width=8, heads=2, context=8, vocab_size=V, norm="rezero").double().eval()
    view = pathens.wrap(model)
    ids = ids_batch()
    h0 = model.wte(ids) + model.wpe(torch.arange(T))
    torch.testing.assert_close(view.stem(ids), h0, rtol=0, atol=0)
    torch.testing.assert_close(model(ids), h0 @ model.lm_head.weight.T, rtol=0, atol=0)
    res = pathens.path_gradients(view, ids, ids, components=True, progress=False)
    # closed form of d(mean next-token CE)/dh0 through the head alone: W^T (softmax(W h) - e_y)
    W = model.lm_head.weight
    p = torch.softmax(h0[:, :-1] @ W.T, -1) - F.one_hot(ids[:, 1:], V).double()
    closed = torch.zeros_like(h0)
    closed[:, :-1] = p @ W / (3 * (T - 1))
    torch.testing.assert_close(res.components[0], closed, rtol=1e-12, atol=1e-15)
    assert torch.count_nonzero(res.components[1:]) == 0
    assert res.total[0] > 0 and (res.total[1:] == 0).all()


@pytest.mark.parametrize("norm", ["post", "rezero"])
def test_deleting_a_sublayer_equals_a_hand_edited_model(norm):
    model = lively(norm)
    ids = ids_batch()

    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x)

    edited = copy.deepcopy(model)
    edited.h[0].mlp = Zero()        # its block: post(x + scale * 0)
    edited.h[1].attn = Zero()
    row = pathens.lesion.evaluate(model, (ids, ids), deleted=["h.0.mlp", 2])
    with torch.no_grad():
        assert row["loss"] == pytest.approx(float(next_token_loss(edited(ids), ids)), rel=1e-12)
    view = pathens.wrap(model)
    torch.testing.assert_close(view.run(ids, deleted=[1, 2]), edited(ids), rtol=0, atol=1e-12)
    whole = copy.deepcopy(model)
    whole.h[1].attn, whole.h[1].mlp = Zero(), Zero()  # a whole layer, by its module name
    torch.testing.assert_close(view.run(ids, deleted=["h.1"]), whole(ids), rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path, norm):
    model = lively(norm).float()
    path = save_checkpoint(tmp_path / "gpt.pt", model, dataset="text", seed=3, steps=7, loss=2.5,
                           data={"source": "python-stdlib", "sha256": "ab"},
                           extra={"command": "python train.py"})
    rebuilt, meta = load(path)
    ids = ids_batch()
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    torch.testing.assert_close(rebuilt(ids), model(ids), rtol=0, atol=0)
    assert (meta["builder"], meta["dataset"], meta["steps"], meta["loss"], meta["seed"]) == \
        ("gpt", "text", 7, 2.5, 3)
    assert meta["data"]["sha256"] == "ab" and meta["extra"]["command"] == "python train.py"
    raw = torch.load(path, weights_only=True)
    del raw["pathens"]["arch"]["heads"]  # same keys and shapes: a default would load silently
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="lacks the argument 'heads'"):
        load(path)


def test_a_format_1_checkpoint_without_builder_is_a_cifar_resnet(tmp_path):
    from pathens.demo import bundled_dir
    path = next(bundled_dir().glob("*.pt"))
    assert "builder" not in torch.load(path, weights_only=True)["pathens"]
    model, meta = load(path)
    assert type(model).__name__ == "CifarResNet" and model.config == meta["arch"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(width=10, heads=4), "divisible by heads"),
    (dict(norm="layer"), "norm must be one of pre, post, rezero, none"),
    (dict(depth=0), "depth must be an integer >= 1"),
    (dict(vocab_size=1), "vocab_size must be an integer >= 2"),
    (dict(dropout=1.0), "dropout must be a number in"),
    (dict(alpha_init=0.5), "only applies to norm='rezero'"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(PathensError, match=message) as info:
        gpt(**kwargs)
    assert "\n" not in str(info.value)


def test_bad_token_inputs_are_one_line_errors():
    model = gpt(depth=1, width=8, heads=2, context=8, vocab_size=V)
    with pytest.raises(PathensError, match="longer than the model's context of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(PathensError, match="vocabulary has 13"):
        model(torch.full((1, 4), V))
    view = pathens.wrap(model)
    with pytest.raises(PathensError, match="context of 8"):
        pathens.path_gradients(view, torch.zeros(1, 9, dtype=torch.long),
                               torch.zeros(1, 9, dtype=torch.long), progress=False)


def test_init_scales_residual_projections_by_depth_for_pre_ln_only():
    torch.manual_seed(0)
    pre = gpt(depth=8, width=64, heads=4, norm="pre")
    post = gpt(depth=8, width=64, heads=4, norm="post")
    std = lambda m: m.h[0].mlp.proj.weight.std().item()
    assert std(pre) == pytest.approx(0.02 / 4, rel=0.05)   # 1/sqrt(2 * 8) = 1/4
    assert std(post) == pytest.approx(0.02, rel=0.05)
    assert pre.h[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
