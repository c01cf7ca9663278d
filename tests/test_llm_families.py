"""Hugging Face language-model families as residual networks (pathens/adapters/hf_decoder.py,
hf_encoders.py): Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Gemma3, Phi-3, Granite, OLMo2,
OPT (pre- and post-LN), GPT-NeoX (sequential), RoBERTa, DistilBERT and ViT, and the parallel
residual families Pythia (GPT-NeoX's default), Phi and Cohere, each a tiny
random model built from transformers' own classes and configs (nothing downloaded; GQA where
the family has it; sliding windows shorter than the inputs), float64.

Oracles: the model's own forward (logits, also with padding), the model's own autograd of its
own loss at the stream entering its first layer (a pre-hook makes it a leaf), brute-force
enumeration of all 2^n paths (autograd through detach masks), and deep copies of the model
edited by hand (a forward hook zeroing one sublayer's output). The README's table of families
is generated here by wrapping each model, and checked to be in README verbatim."""
from __future__ import annotations

import copy
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pathens
from pathens import lesion, paths

T = pytest.importorskip("transformers")
hf_decoder = pytest.importorskip("pathens.adapters.hf_decoder")

VOCAB, CONTEXT, LAYERS = 100, 24, 2
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# what every decoder config shares: 2 layers, d = 32, 4 heads (2 key-value heads: GQA), MLP 64
DEC = dict(num_hidden_layers=LAYERS, hidden_size=32, intermediate_size=64, num_attention_heads=4,
           vocab_size=VOCAB, max_position_embeddings=CONTEXT, initializer_range=0.2,
           pad_token_id=0, bos_token_id=1, eos_token_id=2)
GQA = dict(num_key_value_heads=2)
ENC = dict(num_hidden_layers=LAYERS, hidden_size=32, intermediate_size=64, num_attention_heads=4,
           initializer_range=0.2)


def _jitter(model, seed: int):
    """Random norm weights (and LayerNorm biases), so that no norm is the plain
    standardisation; float64, eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None:
                m.weight.copy_(0.7 + 0.6 * torch.rand(m.weight.shape, generator=g))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.double().eval()


def _build(cls, config_cls, seed, **kw):
    def build():
        torch.manual_seed(seed)
        return _jitter(getattr(T, cls)(getattr(T, config_cls)(**kw)), seed)
    return build


# family -> (README name, builder, the module holding block 0, {block: modules to zero})
# (every family: block 1 = layer 0's MLP, block 2 = layer 1's attention, zeroed by hand)
def _edits(attn="self_attn", mlp="mlp", prefix="model.layers"):
    return {1: [f"{prefix}.0.{mlp}"], 2: [f"{prefix}.1.{attn}"]}


OPT = dict(num_hidden_layers=LAYERS, hidden_size=32, ffn_dim=64, num_attention_heads=4,
           vocab_size=VOCAB, max_position_embeddings=CONTEXT, init_std=0.2)
DECODERS = {
    "llama": ("Llama", _build("LlamaForCausalLM", "LlamaConfig", 0, **DEC, **GQA)),
    "mistral": ("Mistral", _build("MistralForCausalLM", "MistralConfig", 1, **DEC, **GQA,
                                  sliding_window=4)),
    "qwen2": ("Qwen2", _build("Qwen2ForCausalLM", "Qwen2Config", 2, **DEC, **GQA)),
    "qwen3": ("Qwen3", _build("Qwen3ForCausalLM", "Qwen3Config", 3, **DEC, **GQA, head_dim=8)),
    "gemma": ("Gemma", _build("GemmaForCausalLM", "GemmaConfig", 4, **DEC, num_key_value_heads=1,
                              head_dim=8)),
    "gemma2": ("Gemma2", _build("Gemma2ForCausalLM", "Gemma2Config", 5, **DEC, **GQA, head_dim=8,
                                sliding_window=4, final_logit_softcapping=5.0)),
    "gemma3": ("Gemma3", _build("Gemma3ForCausalLM", "Gemma3TextConfig", 6, **DEC, **GQA,
                                head_dim=8, sliding_window=4, layer_types=["sliding_attention",
                                                                           "full_attention"])),
    "phi3": ("Phi-3", _build("Phi3ForCausalLM", "Phi3Config", 7, **DEC, **GQA)),
    "granite": ("Granite", _build("GraniteForCausalLM", "GraniteConfig", 8, **DEC, **GQA,
                                  residual_multiplier=0.5, logits_scaling=2.0,
                                  embedding_multiplier=3.0)),
    "olmo": ("OLMo", _build("OlmoForCausalLM", "OlmoConfig", 16, **DEC, **GQA)),
    "olmo2": ("OLMo2", _build("Olmo2ForCausalLM", "Olmo2Config", 9, **DEC, **GQA)),
    "smollm3": ("SmolLM3", _build("SmolLM3ForCausalLM", "SmolLM3Config", 17, **DEC, **GQA)),
    "starcoder2": ("StarCoder2", _build("Starcoder2ForCausalLM", "Starcoder2Config", 18, **DEC,
                                        **GQA)),
    "stablelm": ("StableLM", _build("StableLmForCausalLM", "StableLmConfig", 19, **DEC, **GQA)),
    "opt": ("OPT", _build("OPTForCausalLM", "OPTConfig", 10, **OPT, word_embed_proj_dim=32)),
    "opt_post": ("OPT post-LN (350m)", _build("OPTForCausalLM", "OPTConfig", 11, **OPT,
                                              do_layer_norm_before=False, word_embed_proj_dim=16)),
    "neox": ("GPT-NeoX sequential", _build("GPTNeoXForCausalLM", "GPTNeoXConfig", 12, **DEC,
                                           use_parallel_residual=False)),
}
FIRST = {"opt": "model.decoder.layers.0", "opt_post": "model.decoder.layers.0",
         "neox": "gpt_neox.layers.0"}
EDITS = {"opt": _edits(mlp="fc2", prefix="model.decoder.layers"),
         "opt_post": _edits(mlp="fc2", prefix="model.decoder.layers"),
         "neox": _edits(attn="attention", prefix="gpt_neox.layers")}
ENCODERS = {
    "roberta": ("RoBERTa", _build("RobertaForSequenceClassification", "RobertaConfig", 13, **ENC,
                                  vocab_size=VOCAB, max_position_embeddings=CONTEXT, num_labels=3)),
    "distilbert": ("DistilBERT", _build("DistilBertForSequenceClassification", "DistilBertConfig",
                                        14, n_layers=LAYERS, dim=32, hidden_dim=64, n_heads=4,
                                        vocab_size=VOCAB, max_position_embeddings=CONTEXT,
                                        num_labels=3, initializer_range=0.2)),
    "vit": ("ViT", _build("ViTForImageClassification", "ViTConfig", 15, **ENC, image_size=16,
                          patch_size=4, num_labels=3)),
}
FIRST.update(roberta="roberta.encoder.layer.0", distilbert="distilbert.transformer.layer.0",
             vit="vit.layers.0")
EDITS.update(roberta=_edits("attention.output.dense", "output.dense", "roberta.encoder.layer"),
             distilbert=_edits("attention.out_lin", "ffn.lin2", "distilbert.transformer.layer"),
             vit=_edits("attention", "mlp", "vit.layers"))
FAMILIES = {**DECODERS, **ENCODERS}
NAMES = list(FAMILIES)
# HF RMSNorms (and OLMo's LayerNorm) compute in float32 inside a float64 model (README
# "Numerics"): their gradient identities hold to float32 rounding, the others to float64's
FLOAT32_NORMS = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3",
                 "granite", "olmo", "olmo2", "smollm3"}


def batch(name, n=2, t=12, seed=0):
    """(inputs, targets): token ids (t = 12 > the sliding windows of 4) and, for a language
    model, the same ids as targets; class labels for the encoders; images for ViT."""
    g = torch.Generator().manual_seed(seed)
    if name == "vit":
        return torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64), torch.tensor([2, 0])
    ids = torch.randint(3, VOCAB, (n, t), generator=g)  # no pad / bos / eos ids
    return ids, (ids if name not in ENCODERS else torch.tensor([1, 2])[:n])


@pytest.fixture(scope="module")
def views(one_thread):
    """family -> (model, its view), wrapped once for the file (wrap proves on a probe)."""
    return {name: (m, pathens.wrap(m)) for name, (_, build) in FAMILIES.items()
            for m in [build()]}


def logits(model, x):
    out = model(x) if x.is_floating_point() else model(input_ids=x)
    return out.logits


def model_loss(model, name, x, y):
    """The model's own mean loss in float64: shifted cross-entropy (position t predicts t+1)
    for a language model, cross-entropy of the labels for an encoder."""
    z = logits(model, x)
    if name not in ENCODERS:
        return F.cross_entropy(z[:, :-1].reshape(-1, VOCAB), y[:, 1:].reshape(-1))
    return F.cross_entropy(z, y)


def model_stream_grad(model, name, x, y):
    """d(loss)/d(stream entering the first layer) by the model's own forward and backward."""
    leaf = {}

    def hook(module, args, kwargs):
        if args:
            leaf["h"] = args[0].detach().requires_grad_(True)
            return (leaf["h"], *args[1:]), kwargs
        key = next(iter(kwargs))
        leaf["h"] = kwargs[key].detach().requires_grad_(True)
        return args, {**kwargs, key: leaf["h"]}

    handle = model.get_submodule(FIRST.get(name, "model.layers.0")).register_forward_pre_hook(
        hook, with_kwargs=True)
    try:
        return torch.autograd.grad(model_loss(model, name, x, y), leaf["h"])[0]
    finally:
        handle.remove()


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


# ---- every family: blocks, reproduction, gradient, deletion ------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_wraps_and_reproduces_the_model(views, name):
    model, view = views[name]
    assert view.num_blocks == 2 * LAYERS
    assert view.layers == [[0, 1], [2, 3]]
    first = FIRST.get(name, "model.layers.0")
    assert [b.name for b in view.blocks[:2]] == [f"{first}.attn", f"{first}.mlp"]
    assert view.loss == ("next_token" if name in DECODERS else "classification")
    x, _ = batch(name)
    with torch.no_grad():
        torch.testing.assert_close(view(x), logits(model, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_decomposition_sums_to_the_models_own_gradient(views, name):
    """sum_k G_k = the model's own autograd gradient: to 1e-10 in float64, to float32 rounding
    where the family's RMSNorm computes in float32 (then it is NOT 1e-12: the test says so)."""
    model, view = views[name]
    x, y = batch(name)
    res = pathens.path_gradients(view, x, y, components=True, progress=False)
    truth = model_stream_grad(model, name, x, y)
    err = rel(res.components.sum(0), truth)
    assert res.components.dtype == torch.float64 and float(truth.norm()) > 0
    if name in FLOAT32_NORMS:
        assert 1e-13 < err < 1e-5 and res.residual < 1e-5
    else:
        assert err < 1e-10 and res.residual < 1e-10
    assert res.fraction()[1:].sum() > 1e-3  # the branches carry gradient: nothing trivial


@pytest.mark.parametrize("name", NAMES)
def test_deletion_equals_the_hand_edited_model(views, name):
    """Deleting block 1 (layer 0's MLP) or 2 (layer 1's attention) = the model with that
    sublayer's output zeroed by a forward hook (for post-LN OPT, RoBERTa, DistilBERT: the
    projection before the residual LayerNorm, which then gives LN(x + 0))."""
    model, view = views[name]
    x, y = batch(name)
    for i, edit in EDITS.get(name, _edits()).items():
        edited = copy.deepcopy(model)
        for path in edit:
            edited.get_submodule(path).register_forward_hook(
                lambda m, a, out: (torch.zeros_like(out[0]), *out[1:]) if isinstance(out, tuple)
                else torch.zeros_like(out))
        with torch.no_grad():
            want = float(model_loss(edited, name, x, y))
            intact = float(model_loss(model, name, x, y))
        row = lesion.evaluate(view, (x, y), deleted=[i])
        assert row["loss"] == pytest.approx(want, rel=1e-10), f"block {i}"
        assert abs(want - intact) > 1e-6  # the edit changes the model
        with torch.no_grad():
            torch.testing.assert_close(view.run(x, deleted=[i]), logits(edited, x),
                                       rtol=1e-12, atol=1e-12)


# ---- brute force over all paths, numerics ---------------------------------------------------

def brute_force(view, x, y):
    """B[k] = the sum of the gradients of all C(n, k) paths of length k at the first block's
    input, each by autograd through the view with detach masks (tests/test_gradients.py's
    oracle, with the next-token loss)."""
    n = view.num_blocks
    h, ctx = view.embed(x)
    out = [torch.zeros_like(h) for _ in range(n + 1)]
    for mask in paths.enumerate_paths(n):
        h0 = h.detach().requires_grad_(True)
        z = view.run_from(h0, 0, path=mask, ctx=ctx)
        loss = F.cross_entropy(z[:, :-1].reshape(-1, VOCAB), y[:, 1:].reshape(-1))
        out[int(mask.sum())] += torch.autograd.grad(loss, h0)[0]
    return out


def float64_rmsnorms(model):
    """The model with each Llama RMSNorm computed in float64 (instead of HF's float32 upcast,
    a downcast here): the same function up to float32 rounding."""
    def exact(norm):
        def forward(x):
            return norm.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)
                                                 + norm.variance_epsilon)
        return forward
    for m in model.modules():
        if type(m).__name__ == "LlamaRMSNorm":
            m.forward = exact(m)
    return model


@pytest.mark.parametrize("exact_norms", [False, True])
def test_llama_exact_components_equal_brute_force(exact_norms):
    """A 3-layer Llama (6 blocks, 64 paths): G_k = the brute-force sum of its paths for every
    k. With HF's RMSNorm (float32 inside) the identities hold to float32 rounding, and to
    1e-10 once the norms compute in float64: the gap is the upcast, not the decomposition."""
    torch.manual_seed(0)
    model = _jitter(T.LlamaForCausalLM(T.LlamaConfig(**{**DEC, "num_hidden_layers": 3}, **GQA)), 0)
    if exact_norms:
        model = float64_rmsnorms(model)
    view = pathens.wrap(model)
    assert view.num_blocks == 6
    x, y = batch("llama", t=8)
    res = pathens.path_gradients(view, x, y, components=True, progress=False)
    G, B = res.components, brute_force(view, x, y)
    tol = 1e-9 if exact_norms else 1e-5
    for k in range(view.num_blocks + 1):
        assert rel(G[k], B[k]) < tol, f"length {k}"
    err = rel(G.sum(0), model_stream_grad(model, "llama", x, y))
    assert (err < 1e-12) if exact_norms else (1e-13 < err < 1e-5)
    np.testing.assert_allclose(res.norms, [float(b.norm()) for b in B], rtol=tol)


# ---- what each family's adapter does -----------------------------------------------------------

def test_block_parts_by_layout(views):
    """Sandwich norms (Gemma2) and post-branch norms (OLMo2) sit in the branch; post-LN OPT's
    post is the LayerNorm; Granite's residual_multiplier is the branch scale."""
    assert hf_decoder.layout(views["gemma2"][0].model.layers[0]) == "sandwich"
    assert hf_decoder.layout(views["olmo2"][0].model.layers[0]) == "post-branch"
    assert hf_decoder.layout(views["llama"][0].model.layers[0]) == "pre-norm"
    model, view = views["opt_post"]
    layer = model.model.decoder.layers[0]
    assert view.blocks[0].parts.post is layer.self_attn_layer_norm
    assert view.blocks[1].parts.post is layer.final_layer_norm
    assert all(b.parts.post is None for b in views["opt"][1].blocks)
    assert [b.parts.scale for b in views["granite"][1].blocks] == [0.5] * 4
    assert all(b.parts.scale is None for b in views["llama"][1].blocks)


def test_each_layer_gets_the_arguments_the_model_gives_it(views):
    """Gemma3 with a sliding layer then a full one: the stem records each layer's own mask (a
    window of 4 over 12 tokens for layer 0; none for layer 1, SDPA's causal flag) and rotary
    table (local, then global), and leaves no stand-in forward behind."""
    model, view = views["gemma3"]
    x, _ = batch("gemma3")
    h, ctx = view.embed(x)
    l0, l1 = model.model.layers
    kw0, kw1 = ctx[hf_decoder.PER_LAYER][l0], ctx[hf_decoder.PER_LAYER][l1]
    assert kw0["attention_mask"].shape == (2, 1, 12, 12) and kw1["attention_mask"] is None
    assert not torch.equal(kw0["position_embeddings"][0], kw1["position_embeddings"][0])
    assert "forward" not in l0.__dict__ and "forward" not in l1.__dict__
    assert not set(ctx[hf_decoder.PER_LAYER][l0]) & {"cache", "use_cache", "past_key_values"}
    with torch.no_grad():  # the same layer 1 given layer 0's mask is another model
        wrong = {hf_decoder.PER_LAYER: {l0: ctx[hf_decoder.PER_LAYER][l0],
                                        l1: ctx[hf_decoder.PER_LAYER][l0]}}
        assert not torch.allclose(view.run_from(h, 0, ctx=wrong), logits(model, x))


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_padding_reproduces_the_model(views, name):
    """Right-padded batches (dict inputs): the view gives the model's logits, and the lesion's
    next-token loss counts only the real tokens. (Padding runs shorter than Gemma2's window of
    4: a sliding query that sees only pads makes the model's own logits NaN, every position of
    that sequence.)"""
    model, view = views[name]
    ids, _ = batch(name, n=3, t=10, seed=3)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 7:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        z = model(**inputs).logits
        torch.testing.assert_close(view(inputs), z, rtol=1e-12, atol=1e-12)
    valid = (mask[:, 1:] == 1).reshape(-1)
    want = F.cross_entropy(z[:, :-1].reshape(-1, VOCAB)[valid], ids[:, 1:].reshape(-1)[valid])
    row = lesion.evaluate(view, (inputs, ids))
    assert row["n"] == 9 + 7 + 6 and row["loss"] == pytest.approx(float(want), rel=1e-10)


@pytest.mark.parametrize("name", ["roberta", "distilbert"])
def test_encoder_padding_reproduces_the_model(views, name):
    model, view = views[name]
    ids, _ = batch(name, n=2, t=10, seed=4)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        torch.testing.assert_close(view(inputs), model(**inputs).logits, rtol=1e-12, atol=1e-12)


def test_a_saved_llama_folder_builds_and_wraps(tmp_path):
    """pathens.zoo.build("hf:DIR") of a folder save_pretrained wrote (offline, strict weights)."""
    model = DECODERS["llama"][1]().float()
    model.save_pretrained(tmp_path)
    built, _ = pathens.zoo.build(f"hf:{tmp_path}")
    view = pathens.wrap(built)
    x, _ = batch("llama")
    assert type(built).__name__ == "LlamaForCausalLM" and view.num_blocks == 2 * LAYERS
    with torch.no_grad():
        torch.testing.assert_close(view(x), model(x).logits, rtol=1e-5, atol=1e-6)


# ---- refusals, one line each -------------------------------------------------------------------

def one_line(excinfo):
    return "\n" not in str(excinfo.value)


# parallel residual, x + attn(ln1(x)) + mlp(ln2(x)): one block per layer with two branches
# (tests/test_parallel_branches.py has their brute force, parameter split and deletions)
PARALLEL = {
    "pythia": ("Pythia / GPT-NeoX", _build("GPTNeoXForCausalLM", "GPTNeoXConfig", 20, **DEC)),
    "phi": ("Phi", _build("PhiForCausalLM", "PhiConfig", 21, **DEC)),
    "cohere": ("Cohere", _build("CohereForCausalLM", "CohereConfig", 22, **DEC, **GQA,
                                logit_scale=0.5)),
}
FIRST.update(pythia="gpt_neox.layers.0")


@pytest.mark.parametrize("name", list(PARALLEL))
def test_parallel_residual_wraps_as_one_block_of_two_branches_per_layer(name):
    """Pythia (GPT-NeoX's default use_parallel_residual=True), Phi and Cohere: `layers` blocks
    of two parallel branches (attn, mlp) that reproduce the model and whose exact decomposition
    sums to its own gradient (Cohere's LayerNorm computes in float32: to float32 rounding)."""
    model = PARALLEL[name][1]()
    view = pathens.wrap(model)
    assert view.num_blocks == LAYERS and view.branch_counts == (2,) * LAYERS
    assert all(b.branch_names == ["attn", "mlp"] for b in view.blocks)
    x, y = batch(name)
    with torch.no_grad():
        torch.testing.assert_close(view(x), logits(model, x), rtol=1e-12, atol=1e-12)
    res = pathens.path_gradients(view, x, y, components=True, progress=False)
    err = rel(res.components.sum(0), model_stream_grad(model, name, x, y))
    assert err < (1e-5 if name == "cohere" else 1e-10)


def test_a_wrong_structural_match_is_refused():
    """A layer with Llama's attribute names that computes something else (its post-attention
    norm on the attention output, Gemma2-style, with no norm before the MLP) is refused by the
    proof, naming the layer; a layer missing a norm is refused naming what it lacks."""
    class NormAfterAttention(T.models.llama.modeling_llama.LlamaDecoderLayer):
        def forward(self, hidden_states, attention_mask=None, position_ids=None,
                    position_embeddings=None, **kwargs):
            a, _ = self.self_attn(self.input_layernorm(hidden_states),
                                  attention_mask=attention_mask,
                                  position_embeddings=position_embeddings)
            h = hidden_states + self.post_attention_layernorm(a)
            return h + self.mlp(h)

    model = DECODERS["llama"][1]()
    model.model.layers[1].__class__ = NormAfterAttention
    with pytest.raises(pathens.WrapError, match=r"module model\.layers\.1 \(NormAfterAttention\): "
                                                r"its 2 blocks \(attn, mlp\)") as e:
        pathens.wrap(model)
    assert one_line(e)
    model = DECODERS["llama"][1]()
    del model.model.layers[0].post_attention_layernorm
    with pytest.raises(pathens.WrapError, match="LlamaDecoderLayer does not have a decoder layout"):
        pathens.wrap(model)


@pytest.mark.parametrize("name,context", [("llama", CONTEXT), ("opt", CONTEXT),
                                          ("roberta", CONTEXT - 2)])
def test_sequences_beyond_the_context_are_refused(views, name, context):
    """max_position_embeddings (RoBERTa's positions start after the padding id: 2 fewer)."""
    _, view = views[name]
    assert view.max_length == context and view.vocab_size == VOCAB
    ids, y = batch(name, t=context)
    lesion.evaluate(view, (ids, y))  # the longest that fits
    ids, y = batch(name, t=context + 1)
    with pytest.raises(pathens.PathensError, match=f"longer than the model's context of "
                                                   f"{context}") as e:
        pathens.path_gradients(view, ids, y, progress=False)
    assert one_line(e)


# ---- README's table, generated by wrapping each family -----------------------------------------

def family_table() -> str:
    """README's table: one row per family, from wrapping a tiny model of each here (blocks per
    layer; how closely the exact decomposition sums to the model's own gradient, in float64)."""
    rows = ["| family | class | blocks per layer | status |", "| --- | --- | --- | --- |"]
    for name, (family, build) in {**FAMILIES, **PARALLEL}.items():
        model = build()
        view = pathens.wrap(model)
        first = view.blocks[view.layers[0][0]]
        if first.num_branches > 1:  # a parallel residual: one block, its branches
            blocks = (f"1 with {first.num_branches} parallel branches "
                      f"({', '.join(first.branch_names)})")
        else:
            subs = ", ".join(view.blocks[i].sublayer for i in view.layers[0])
            blocks = f"{len(view.layers[0])} ({subs})"
        x, y = batch(name)
        res = pathens.path_gradients(view, x, y, progress=False)
        check = ("wraps; exact decomposition = the model's gradient to 1e-12"
                 if res.residual < 1e-12 else
                 "wraps; the same to float32 rounding (its norms compute in float32)"
                 if res.residual < 1e-5 else f"wraps; residual {res.residual:.0e}")
        rows.append(f"| {family} | `{type(model).__name__}` | {blocks} | {check} |")
    return "\n".join(rows) + "\n"


def test_readme_family_table_is_generated():
    table = family_table()
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert table in readme, "README's family table is out of date; it should read:\n" + table
