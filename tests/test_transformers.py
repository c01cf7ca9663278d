"""Transformers as residual networks, each checked against an independent computation:
Hugging Face GPT-2 (pre-LN decoder, 4 layers = 8 blocks, 256 paths), torchvision and timm
ViTs (3 layers = 6 blocks; timm's with LayerScale) and Hugging Face BERT (post-LN: `post` is
the LayerNorm). All float64, random init, nothing downloaded.

Oracles: the model's own forward (logits), brute-force enumeration of all 2^n paths (each
path's gradient by autograd through detach masks), the model's own autograd of its own loss
(Hugging Face's `model(ids, labels=ids).loss` for next-token prediction), and deep copies of
the model edited by hand (a forward hook zeroing a sublayer's output)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pathens
from pathens import lesion, paths

transformers = pytest.importorskip("transformers")
tv_vit = pytest.importorskip("torchvision.models.vision_transformer")
timm_vit = pytest.importorskip("timm.models.vision_transformer")

VOCAB, CONTEXT = 64, 32


# ---- small models, one per family ------------------------------------------------------------

def _jitter_norms(model, seed: int):
    """Random LayerNorm affines, so that no norm is the plain standardisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(0.7 + 0.6 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=VOCAB,
                                     n_positions=CONTEXT, bos_token_id=0, eos_token_id=0)
    return _jitter_norms(transformers.GPT2LMHeadModel(config).double().eval(), 1)


def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                     intermediate_size=64, vocab_size=VOCAB,
                                     max_position_embeddings=CONTEXT, num_labels=3)
    return _jitter_norms(transformers.BertForSequenceClassification(config).double().eval(), 2)


def tv():
    torch.manual_seed(0)
    model = tv_vit.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                                     hidden_dim=16, mlp_dim=32, num_classes=5)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # built zero: every gradient 0
    return _jitter_norms(model.double().eval(), 3)


def timm():
    torch.manual_seed(0)
    model = timm_vit.VisionTransformer(img_size=32, patch_size=8, depth=3, num_heads=2,
                                       embed_dim=16, num_classes=5, init_values=0.5)
    model = _jitter_norms(model.double().eval(), 4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # a per-channel LayerScale: gamma = 0.5 +- 0.2, channel by channel
        for b in model.blocks:
            for ls in (b.ls1, b.ls2):
                ls.gamma.add_(0.2 * torch.randn(ls.gamma.shape, generator=g, dtype=torch.float64))
    return model


def tokens(n=2, t=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, t), generator=g)


def images(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64)


# family -> (model builder, () -> an (inputs, targets) batch, the module holding block 0)
FAMILIES = {
    "gpt2": (gpt2, lambda: (tokens(), tokens()), "transformer.h.0"),
    "bert": (bert, lambda: (tokens(3), torch.tensor([0, 2, 1])), "bert.encoder.layer.0"),
    "torchvision_vit": (tv, lambda: (images(), torch.tensor([1, 4])),
                        "encoder.layers.encoder_layer_0"),
    "timm_vit": (timm, lambda: (images(), torch.tensor([3, 0])), "blocks.0"),
}
NAMES = list(FAMILIES)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def views(one_thread):
    """family -> (model, its view): wrapped once for the whole file (wrap proves on a probe)."""
    out = {}
    for name, (build, _, _) in FAMILIES.items():
        model = build()
        out[name] = model, pathens.wrap(model)
    return out


def model_loss(model, name, x, y, mask=None):
    """The mean loss of the model's own logits, in float64: for GPT-2 the shifted
    cross-entropy written out (position t predicts token t+1; targets where `mask` is 0 are
    left out), which is Hugging Face's labels= loss (test_next_token_loss_is_hugging_faces;
    HF itself casts the logits to float32, so it is no 1e-10 oracle)."""
    if name == "gpt2":
        logits = model(input_ids=x, attention_mask=mask).logits[:, :-1]
        tgt = y if mask is None else y.masked_fill(mask == 0, -100)
        return F.cross_entropy(logits.reshape(-1, VOCAB), tgt[:, 1:].reshape(-1))
    out = model(x) if torch.is_tensor(x) and x.is_floating_point() else model(input_ids=x)
    return F.cross_entropy(out if torch.is_tensor(out) else out.logits, y)


def model_stream_grad(model, name, x, y, mask=None, loss_fn=None):
    """d(loss)/d(residual stream entering the first block), by the model's own forward and
    backward (a pre-hook makes the first block's input a leaf); loss_fn(model) defaults to
    model_loss."""
    first = model.get_submodule(FAMILIES[name][2])
    leaf = {}

    def hook(module, args, kwargs):
        if args:
            leaf["h"] = args[0].detach().requires_grad_(True)
            return (leaf["h"], *args[1:]), kwargs
        key = next(iter(kwargs))
        leaf["h"] = kwargs[key].detach().requires_grad_(True)
        return args, {**kwargs, key: leaf["h"]}

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        loss = loss_fn(model) if loss_fn else model_loss(model, name, x, y, mask)
        return torch.autograd.grad(loss, leaf["h"])[0]
    finally:
        handle.remove()


def view_loss(view, name, logits, y):
    """The same loss computed directly from logits (position t predicts token t+1 for GPT-2)."""
    if name == "gpt2":
        return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), y[:, 1:].reshape(-1))
    return F.cross_entropy(logits, y)


# ---- the view reproduces the model ----------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_view_reproduces_model(views, name):
    model, view = views[name]
    x, _ = FAMILIES[name][1]()
    assert view.num_blocks == (8 if name == "gpt2" else 6)
    assert view.layers == [[2 * i, 2 * i + 1] for i in range(view.num_blocks // 2)]
    first = FAMILIES[name][2]
    assert [b.name for b in view.blocks[:2]] == [f"{first}.attn", f"{first}.mlp"]
    assert all(b.identity_shortcut and not b.downsample for b in view.blocks)
    with torch.no_grad():
        ref = model(x) if x.is_floating_point() else model(input_ids=x)
        ref = ref if torch.is_tensor(ref) else ref.logits
        torch.testing.assert_close(view(x), ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(view.run(x, order=list(range(view.num_blocks))), ref,
                                   rtol=1e-12, atol=1e-12)


def test_block_parts_of_each_family(views):
    """post-LN BERT: the post is the sublayer's LayerNorm; timm: the scale is LayerScale's
    per-channel gamma (the same tensor: lesions and gradients see trained values)."""
    bert_model, bert_view = views["bert"]
    layer = bert_model.bert.encoder.layer[1]
    assert bert_view.blocks[2].parts.post is layer.attention.output.LayerNorm
    assert bert_view.blocks[3].parts.post is layer.output.LayerNorm
    timm_model, timm_view = views["timm_vit"]
    assert timm_view.blocks[4].parts.scale is timm_model.blocks[2].ls1.gamma
    assert timm_view.blocks[5].parts.scale is timm_model.blocks[2].ls2.gamma
    for name in ("gpt2", "torchvision_vit"):
        assert all(b.parts.post is None and b.parts.scale is None for b in views[name][1].blocks)


def test_vit_probes_without_example_input():
    """torchvision ViT: wrap's default probe from `image_size`; timm: the adapter's probe from
    patch_embed, also for create_model(img_size=32), whose pretrained_cfg still says 224."""
    model = tv()
    probe = pathens.view.proof.default_probe(model, next(model.parameters()))
    assert probe.shape == (2, 3, 32, 32) and probe.dtype == torch.float64
    assert pathens.wrap(model).source == "torch.fx"
    made = pytest.importorskip("timm").create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
        num_classes=3, embed_dim=16, num_heads=2)
    assert made.pretrained_cfg["input_size"] == (3, 224, 224)
    view = pathens.wrap(made)
    assert view.input_shape == (3, 32, 32) and view.num_blocks == 4
    assert view.source.startswith("model adapter")


@pytest.mark.parametrize("block_fn,prefix", [("ResPostBlock", 0), ("ParallelThingsBlock", 2)])
def test_other_timm_blocks_wrap(block_fn, prefix):
    """wrap proves ResPostBlock (norm inside the branch) and ParallelThingsBlock (the branch
    sums the parallel sublayers) against the model, here with register tokens too."""
    torch.manual_seed(0)
    model = timm_vit.VisionTransformer(img_size=16, patch_size=8, depth=2, num_heads=2,
                                       embed_dim=8, num_classes=3, init_values=0.4,
                                       reg_tokens=prefix,
                                       block_fn=getattr(timm_vit, block_fn)).double().eval()
    view = pathens.wrap(model)
    assert view.num_blocks == 4 and view.blocks[0].in_shape == (1 + prefix + 4, 8)
    x = images(2)[:, :, :16, :16]
    torch.testing.assert_close(view(x), model(x), rtol=1e-12, atol=1e-12)


# ---- gradient by path length: brute force and autograd -------------------------------------

def brute_force(view, name, x, y):
    """B[k] = the sum of the gradients of all C(n, k) paths of length k at the first block's
    input, each path by autograd through the view with detach masks (2^n backward passes)."""
    n = view.num_blocks
    h, ctx = view.embed(x)
    out = [torch.zeros_like(h) for _ in range(n + 1)]
    for mask in paths.enumerate_paths(n):
        h0 = h.detach().requires_grad_(True)
        loss = view_loss(view, name, view.run_from(h0, 0, path=mask, ctx=ctx), y)
        out[int(mask.sum())] += torch.autograd.grad(loss, h0)[0]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_exact_components_equal_brute_force_and_autograd(views, name):
    model, view = views[name]
    x, y = FAMILIES[name][1]()
    res = pathens.path_gradients(view, x, y, components=True, progress=False)
    G = res.components
    h = view.stem(x)
    assert G.shape == (view.num_blocks + 1, *h.shape) and G.dtype == torch.float64
    truth = model_stream_grad(model, name, x, y)  # the model's own loss, its own autograd
    torch.testing.assert_close(G.sum(0), truth, rtol=1e-10, atol=1e-14)
    assert res.residual < 1e-10
    assert res.gradient_norm == pytest.approx(float(truth.norm()), rel=1e-10)
    B = brute_force(view, name, x, y)
    for k in range(view.num_blocks + 1):
        torch.testing.assert_close(G[k], B[k], rtol=1e-9, atol=1e-15, msg=f"length {k}")
    np.testing.assert_allclose(res.norms, [float(b.norm()) for b in B], rtol=1e-9, atol=1e-15)


# ---- lesions against hand-edited models ----------------------------------------------------

def zeroed(model, *paths_):
    """A deep copy of the model whose modules at `paths_` output zeros (a forward hook): the
    residual branch they end is then removed by hand. Tuples (attention modules) keep their
    other entries."""
    edited = copy.deepcopy(model)

    def zero(module, args, out):
        if isinstance(out, tuple):
            return (torch.zeros_like(out[0]), *out[1:])
        return torch.zeros_like(out)

    for p in paths_:
        edited.get_submodule(p).register_forward_hook(zero)
    return edited


# family -> {block index: the modules whose zeroed output deletes that block's branch}
# BERT is post-LN: zeroing the sublayer's output projection before its residual LayerNorm
# leaves LN(x + 0) = LN(x), the view's post(shortcut(x)).
EDITS = {
    "gpt2": {1: ["transformer.h.0.mlp"], 4: ["transformer.h.2.attn"]},
    "bert": {2: ["bert.encoder.layer.1.attention.output.dense"],
             5: ["bert.encoder.layer.2.output.dense"]},
    "torchvision_vit": {0: ["encoder.layers.encoder_layer_0.self_attention"],
                        3: ["encoder.layers.encoder_layer_1.mlp"]},
    "timm_vit": {2: ["blocks.1.attn"], 5: ["blocks.2.mlp"]},
}


def edited_row(model, name, x, y, *paths_):
    """(mean loss, top-1 errors, items) of the hand-edited model, computed directly."""
    edited = zeroed(model, *paths_)
    with torch.no_grad():
        loss = float(model_loss(edited, name, x, y))
        out = edited(x) if x.is_floating_point() else edited(input_ids=x)
        logits = out if torch.is_tensor(out) else out.logits
    if name == "gpt2":
        pred, tgt = logits[:, :-1].argmax(-1), y[:, 1:]
    else:
        pred, tgt = logits.argmax(-1), y
    return loss, int((pred != tgt).sum()), tgt.numel()


@pytest.mark.parametrize("name", NAMES)
def test_deleting_a_sublayer_equals_the_hand_edited_model(views, name):
    model, view = views[name]
    x, y = FAMILIES[name][1]()
    loss = "next_token" if name == "gpt2" else None
    for i, edit in EDITS[name].items():
        row = lesion.evaluate(view, (x, y), deleted=[i], loss=loss)
        want_loss, want_errors, items = edited_row(model, name, x, y, *edit)
        assert row["n"] == items and row["errors"] == want_errors
        assert row["loss"] == pytest.approx(want_loss, rel=1e-10), f"block {i}"
        assert row["error"] == pytest.approx(want_errors / items)
    intact = lesion.evaluate(view, (x, y), loss=loss)
    with torch.no_grad():
        assert intact["loss"] == pytest.approx(float(model_loss(model, name, x, y)), rel=1e-10)


def test_gpt2_deletion_by_module_name_and_by_layer(views):
    """deleted=["transformer.h.1"] removes both sublayers of layer 1 (= blocks 2 and 3 = the
    model with h.1.attn and h.1.mlp zeroed); unit="layer" deletes each whole layer in turn."""
    model, view = views["gpt2"]
    x, y = tokens(), tokens()
    by_name = lesion.evaluate(view, (x, y), deleted=["transformer.h.1"], loss="next_token")
    by_index = lesion.evaluate(view, (x, y), deleted=[2, 3], loss="next_token")
    by_block = lesion.evaluate(view, (x, y), deleted=["transformer.h.1.attn",
                                                      "transformer.h.1.mlp"])
    want = edited_row(model, "gpt2", x, y, "transformer.h.1.attn", "transformer.h.1.mlp")
    for row in (by_name, by_index, by_block):
        assert tuple(row["deleted"]) == (2, 3)
        assert (row["loss"], row["errors"]) == (pytest.approx(want[0], rel=1e-10), want[1])
    res = lesion.delete_each(view, (x, y), unit="layer", progress=False)
    rows = [r for r in res.rows if r["kind"] == "delete"]
    assert [tuple(r["deleted"]) for r in rows] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    for layer, r in enumerate(rows):
        loss, errors, _ = edited_row(model, "gpt2", x, y, f"transformer.h.{layer}.attn",
                                     f"transformer.h.{layer}.mlp")
        assert r["loss"] == pytest.approx(loss, rel=1e-10) and r["errors"] == errors
    assert res.config["unit"] == "layer" and res.config["loss"] == "next_token"


def test_bert_layer_deletion_keeps_both_layernorms(views):
    """Deleting a whole post-LN layer computes LN2(LN1(x)), not x: the view keeps each
    sublayer's post even with its branch gone, as the hand-edited model does."""
    model, view = views["bert"]
    x, y = FAMILIES["bert"][1]()
    row = lesion.evaluate(view, (x, y), deleted=["bert.encoder.layer.1"])
    want = edited_row(model, "bert", x, y, "bert.encoder.layer.1.attention.output.dense",
                      "bert.encoder.layer.1.output.dense")
    assert row["loss"] == pytest.approx(want[0], rel=1e-10) and row["errors"] == want[1]
    skipped = copy.deepcopy(model)  # the layer removed outright (its input passed on) differs
    skipped.bert.encoder.layer[1].register_forward_hook(lambda m, args, kwargs, out: args[0]
                                                        if args else kwargs["hidden_states"],
                                                        with_kwargs=True)
    with torch.no_grad():
        gone = float(model_loss(skipped, "bert", x, y))
    assert abs(gone - row["loss"]) > 1e-6


# ---- padding, next-token loss ---------------------------------------------------------------

def padded_batch():
    """Three sequences of 10 tokens, right-padded to lengths 10, 7 and 4 (the pads hold
    arbitrary ids, which must change nothing)."""
    ids = tokens(3, 10, seed=3)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return ids, mask


def test_gpt2_padding_reproduces_model_and_is_not_counted(views):
    model, view = views["gpt2"]
    ids, mask = padded_batch()
    inputs = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(view(inputs), ref, rtol=1e-12, atol=1e-12)
    # the direct computation: position t predicts token t+1 wherever token t+1 is real
    # (right padding: then token t is real too)
    for deleted, edit in (([], ()), ([3], ("transformer.h.1.mlp",))):
        row = lesion.evaluate(view, (inputs, ids), deleted=deleted, loss="next_token")
        edited = zeroed(model, *edit)
        with torch.no_grad():
            want = float(model_loss(edited, "gpt2", ids, ids, mask))
            pred = edited(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
        valid = mask[:, 1:] == 1
        assert row["n"] == int(valid.sum()) == 9 + 6 + 3
        assert row["errors"] == int(((pred != ids[:, 1:]) & valid).sum())
        assert row["loss"] == pytest.approx(want, rel=1e-10)
        # other ids in the padding: the same metrics
        other = ids.masked_fill(mask == 0, 5)
        again = lesion.evaluate(view, ({"input_ids": other, "attention_mask": mask}, other),
                                deleted=deleted, loss="next_token")
        assert (again["loss"], again["errors"], again["n"]) == pytest.approx(
            (row["loss"], row["errors"], row["n"]), rel=1e-12)


def test_gpt2_padded_gradients_equal_autograd_and_brute_force(views):
    """With a padded mask, sum_k G_k equals the model's own autograd of its loss over the
    real targets, brute force gives G_k (the lengths with few paths); pads get no gradient."""
    model, view = views["gpt2"]
    ids, mask = padded_batch()
    inputs = {"input_ids": ids, "attention_mask": mask}
    res = pathens.path_gradients(view, inputs, ids, components=True, progress=False)
    truth = model_stream_grad(model, "gpt2", ids, ids, mask)
    torch.testing.assert_close(res.components.sum(0), truth, rtol=1e-10, atol=1e-14)
    assert res.residual < 1e-10
    # brute force for the lengths with few paths (0, 1, n-1, n: 18 of the 256; length 1 is
    # every block's branch alone, so the mask reaches each attention)
    h, ctx = view.embed(inputs)
    valid = (mask[:, 1:] == 1).reshape(-1)
    n = view.num_blocks
    for k in (0, 1, n - 1, n):
        b = torch.zeros_like(h)
        for m in paths.enumerate_paths(n):
            if int(m.sum()) == k:
                h0 = h.detach().requires_grad_(True)
                lg = view.run_from(h0, 0, path=m, ctx=ctx)[:, :-1].reshape(-1, VOCAB)
                loss = F.cross_entropy(lg[valid], ids[:, 1:].reshape(-1)[valid])
                b += torch.autograd.grad(loss, h0)[0]
        torch.testing.assert_close(res.components[k], b, rtol=1e-9, atol=1e-15, msg=f"length {k}")
    assert float(res.components[:, 2, 4:].abs().max()) == 0  # padded positions get no gradient


def test_next_token_loss_is_hugging_faces(views):
    """pathens's next_token loss and its gradient are Hugging Face's own
    model(ids, attention_mask, labels).loss (labels -100 at the pads), which HF computes in
    float32 whatever the model's dtype: equal to float32 rounding."""
    model, view = views["gpt2"]
    ids, mask = padded_batch()
    labels = ids.masked_fill(mask == 0, -100)
    inputs = {"input_ids": ids, "attention_mask": mask}
    hf = lambda m: m(input_ids=ids, attention_mask=mask, labels=labels).loss
    with torch.no_grad():
        assert lesion.evaluate(view, (inputs, ids))["loss"] == pytest.approx(
            float(hf(model)), rel=1e-6)
    res = pathens.path_gradients(view, inputs, ids, components=True, progress=False)
    truth = model_stream_grad(model, "gpt2", ids, ids, loss_fn=hf)
    err = float((res.components.sum(0) - truth).norm() / truth.norm())
    assert err < 1e-5


def test_gpt2_left_padding_is_not_counted(views):
    """Left padding: a pair (t, t+1) counts only when both tokens are real."""
    model, view = views["gpt2"]
    ids = tokens(2, 8, seed=1)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    row = lesion.evaluate(view, ({"input_ids": ids, "attention_mask": mask}, ids))
    valid = (mask[:, :-1] == 1) & (mask[:, 1:] == 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    want = F.cross_entropy(logits[valid], ids[:, 1:][valid])
    assert row["n"] == int(valid.sum())
    assert row["loss"] == pytest.approx(float(want), rel=1e-10)


def test_bert_padding_reproduces_model_and_deletion(views):
    """BERT with a padded attention mask (dict inputs): the view gives the model's logits,
    deleting a sublayer gives the hand-edited model's."""
    model, view = views["bert"]
    ids, mask = padded_batch()
    inputs = {"input_ids": ids, "attention_mask": mask}
    y = torch.tensor([2, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(view(inputs), model(**inputs).logits, rtol=1e-12, atol=1e-12)
        edited = zeroed(model, "bert.encoder.layer.0.output.dense")
        want = F.cross_entropy(edited(**inputs).logits, y)
    row = lesion.evaluate(view, (inputs, y), deleted=["bert.encoder.layer.0.mlp"])
    assert row["loss"] == pytest.approx(float(want), rel=1e-10)


# ---- bad input ------------------------------------------------------------------------------

def one_line(excinfo):
    return "\n" not in str(excinfo.value)


def test_token_ids_out_of_vocabulary_and_too_long(views):
    _, view = views["gpt2"]
    bad = tokens()
    bad[1, 3] = VOCAB
    with pytest.raises(pathens.PathensError, match="vocabulary has 64 tokens") as e:
        pathens.path_gradients(view, bad, bad, progress=False)
    assert one_line(e)
    with pytest.raises(pathens.PathensError, match="vocabulary") as e:
        lesion.evaluate(view, (bad, bad))
    long = tokens(1, CONTEXT + 1)
    with pytest.raises(pathens.PathensError, match="longer than the model's context of 32") as e:
        lesion.evaluate(view, (long, long), loss="next_token")
    assert one_line(e)
    _, bview = views["bert"]
    with pytest.raises(pathens.PathensError, match="vocabulary") as e:
        pathens.path_gradients(bview, bad, torch.tensor([0, 1]), progress=False)
    assert one_line(e)


def test_blocks_that_are_not_a_chain_are_refused():
    """Something between two layers breaks the chain: named in one line, for a traced model
    (torchvision ViT) and for one with a model adapter (GPT-2, whose blocks are hooked)."""
    model = tv()
    layers = list(model.encoder.layers)
    model.encoder.layers = torch.nn.Sequential(layers[0], torch.nn.Dropout(0.0).eval(),
                                               _Twice(), *layers[1:])
    with pytest.raises(pathens.WrapError, match="not chained") as e:
        pathens.wrap(model)
    assert one_line(e)
    g = gpt2()
    g.transformer.h[2].register_forward_pre_hook(lambda m, args: (2 * args[0], *args[1:]))
    with pytest.raises(pathens.WrapError, match="chain breaks between transformer.h.1 and "
                                                "transformer.h.2") as e:
        pathens.wrap(g)
    assert one_line(e)


class _Twice(torch.nn.Module):
    def forward(self, x):
        return 2 * x
