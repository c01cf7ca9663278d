"""Hugging Face decoder-only language models, matched by structure rather than by name.

Dozens of transformers families share one decoder-layer shape and differ only in names and
details. The layer's attributes say which layout it has (`layout`), and each layout splits the
layer into two residual blocks, attention then MLP, `x + branch(x)` (post-LN: `LN(x + branch(x))`),
except the parallel one (one block, two branches):

    pre-norm     (Llama, Mistral, Qwen2, Qwen3, Gemma, Phi-3, Granite, OLMo, SmolLM3,
                 StarCoder2, StableLM)
                 attn: self_attn(input_layernorm(x)), mlp: mlp(post_attention_layernorm(x))
                 (Phi-3's resid_*_dropout after; Granite's residual_multiplier is the scale)
    sandwich     (Gemma2, Gemma3): the norm also on the branch's output,
                 attn: post_attention_layernorm(self_attn(input_layernorm(x))),
                 mlp:  post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))
    post-branch  (OLMo2): attn: post_attention_layernorm(self_attn(x)),
                 mlp: post_feedforward_layernorm(mlp(x))
    opt          (OPT): do_layer_norm_before=True, pre-LN with self_attn_layer_norm and
                 final_layer_norm; False (OPT-350m), post-LN: post = that LayerNorm
    neox         (GPT-NeoX with use_parallel_residual=False): attention, mlp
    parallel     (Pythia / GPT-NeoX's default, Phi, Cohere, StableLM with
                 use_parallel_residual=True): x + attn(ln1(x)) + mlp(ln2(x)), both
                 sublayers reading the same x: ONE block with two parallel branches, "attn"
                 and "mlp" (BlockParts.branches), so a path takes the shortcut, the attention
                 or the MLP of each layer (3^layers paths). GPT-NeoX has a norm per branch
                 (input_layernorm, post_attention_layernorm, both applied to x); Phi, Cohere
                 and StableLM share one (input_layernorm), which then lies on both branches.

The model adapter finds the layers (model.base_model[.decoder].layers), the head (final norm,
OPT's project_out, lm_head, Gemma's logit soft-capping, Granite's logits_scaling) and a stem
that records what the model passes EVERY layer (`LayerStem`): the stream entering layer 0,
and per layer its attention mask (Gemma2/3, Qwen2 and Mistral give sliding-window layers
their own), rotary position embeddings and position ids, exactly as this version of
transformers builds them; the KV cache is never passed on (the view calls each sublayer many
times). `wrap`'s proof then checks the whole match on a probe: a layer that has the attribute
names but computes something else is refused with its name, never silently used.

Numerics: Hugging Face RMSNorms compute in float32 whatever the model's dtype (Llama's casts
x to float32, Gemma's computes the whole norm in float32), so in a float64 model these
families reproduce themselves exactly (the view calls the same modules) but the exact
decomposition sums to the model's own gradient only to float32 rounding (about 1e-7
relative); LayerNorm families (OPT, GPT-NeoX, Pythia, Phi) stay at 1e-12 (Cohere's own
LayerNorm computes in float32 too).

`register(model_class, layer_class)` applies the same structural adapter to another family.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WrapError
from ..data.inputs import call_model
from .calls import Reached, block_call
from . import BlockParts, Branch, ModelParts, register_block, register_model
from .hf_common import token_probe

# What a layer receives that the view must not pass on: the KV cache (each call would append
# to it) and whether to fill it.
_CACHE = frozenset({"cache", "past_key_values", "past_key_value", "layer_past", "use_cache",
                    "output_attentions"})
PER_LAYER = "per_layer"  # the key of the context that maps each layer to its own arguments

def _has(layer, *names) -> bool:
    return all(isinstance(getattr(layer, n, None), nn.Module) for n in names)


def layout(layer: nn.Module) -> Optional[str]:
    """The decoder layout a layer's attributes name (see the module docstring), or None."""
    if _has(layer, "self_attn", "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm"):
        return "opt"
    if _has(layer, "attention", "input_layernorm", "post_attention_layernorm", "mlp") and \
            hasattr(layer, "use_parallel_residual"):
        return "parallel" if layer.use_parallel_residual else "neox"
    if not _has(layer, "self_attn", "mlp"):
        return None
    if _has(layer, "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
            "post_feedforward_layernorm"):
        return "sandwich"
    if _has(layer, "input_layernorm", "post_attention_layernorm"):
        return "pre-norm"
    if _has(layer, "post_attention_layernorm", "post_feedforward_layernorm"):
        return "post-branch"
    if _has(layer, "input_layernorm"):  # one norm feeding both sublayers: Phi, Cohere
        return "parallel"
    return None


def layer_kwargs(ctx, layer: nn.Module) -> dict:
    """The keyword arguments the model passed `layer` (from LayerStem's per-layer context, or
    a context shared by all layers), less the KV cache."""
    ctx = ctx or {}
    if PER_LAYER in ctx:
        kw = ctx[PER_LAYER].get(layer)
        if kw is None:
            raise WrapError(f"the context holds no arguments for this {type(layer).__name__}: "
                            f"the stem did not see the model call it")
    else:
        kw = ctx
    return {k: v for k, v in kw.items() if k not in _CACHE}


def _first(out):
    """A sublayer's output: attention modules return (output, weights)."""
    return out[0] if isinstance(out, tuple) else out


def decoder_layer(layer: nn.Module) -> list:
    """The two residual blocks (attn, mlp) of a Hugging Face decoder layer, by its layout (a
    parallel layer: one block with the two as parallel branches)."""
    kind = layout(layer)
    if kind is None:
        raise WrapError(f"{type(layer).__name__} is not a Hugging Face decoder layer pathens "
                        f"knows: it needs self_attn and mlp with input_layernorm / "
                        f"post_attention_layernorm (or Gemma2's four norms, OLMo2's two "
                        f"post-norms, OPT's or GPT-NeoX's names); register an adapter for it "
                        f"with pathens.register_block")
    scale = getattr(layer, "residual_multiplier", None)  # Granite: x + m * branch(x)
    scale = float(scale) if isinstance(scale, (int, float)) and scale != 1 else None
    # dropout on each sublayer's output (Phi: one resid_dropout for both)
    drop_a = next((getattr(layer, n) for n in ("resid_attn_dropout", "post_attention_dropout",
                                               "resid_dropout")
                   if isinstance(getattr(layer, n, None), nn.Module)), None)
    drop_m = next((getattr(layer, n) for n in ("resid_mlp_dropout", "post_mlp_dropout",
                                               "resid_dropout")
                   if isinstance(getattr(layer, n, None), nn.Module)), None)
    if kind == "parallel":
        return [parallel_layer(layer, drop_a, drop_m)]
    post_a = post_m = None
    if kind == "opt":
        attn_mod, pre = layer.self_attn, layer.do_layer_norm_before

        def opt_drop(r):
            return F.dropout(r, p=layer.dropout, training=layer.training)

        def attn(x, ctx):
            y = layer.self_attn_layer_norm(x) if pre else x
            return opt_drop(_first(attn_mod(y, **layer_kwargs(ctx, layer))))

        def mlp(x):
            y = layer.final_layer_norm(x) if pre else x
            return opt_drop(layer.fc2(layer.activation_fn(layer.fc1(y))))

        if not pre:  # post-LN (OPT-350m): LN(x + branch(x))
            post_a, post_m = layer.self_attn_layer_norm, layer.final_layer_norm
    else:
        attn_mod = layer.attention if kind == "neox" else layer.self_attn
        if kind == "sandwich":
            norms = (layer.input_layernorm, layer.post_attention_layernorm,
                     layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm)
        elif kind == "post-branch":
            norms = (None, layer.post_attention_layernorm, None, layer.post_feedforward_layernorm)
        else:  # pre-norm, neox
            norms = (layer.input_layernorm, None, layer.post_attention_layernorm, None)
        norm_in, norm_attn_out, norm_mlp_in, norm_mlp_out = norms

        def attn(x, ctx):
            y = x if norm_in is None else norm_in(x)
            r = _first(attn_mod(y, **layer_kwargs(ctx, layer)))
            r = r if norm_attn_out is None else norm_attn_out(r)
            return r if drop_a is None else drop_a(r)

        def mlp(x):
            r = _first(layer.mlp(x if norm_mlp_in is None else norm_mlp_in(x)))
            r = r if norm_mlp_out is None else norm_mlp_out(r)
            return r if drop_m is None else drop_m(r)

    return [BlockParts(name="attn", context=True, branch=attn, post=post_a, scale=scale),
            BlockParts(name="mlp", branch=mlp, post=post_m, scale=scale)]


def parallel_layer(layer: nn.Module, drop_a=None, drop_m=None) -> BlockParts:
    """A parallel-residual layer, x + attn(norm_a(x)) + mlp(norm_m(x)), as one block with two
    branches reading the same x (N, T, d): GPT-NeoX's norm_a, norm_m = input_layernorm,
    post_attention_layernorm (use_parallel_residual=True); Phi's, Cohere's and StableLM's one
    input_layernorm for both."""
    neox = _has(layer, "attention")
    attn_mod = layer.attention if neox else layer.self_attn
    norm_a = layer.input_layernorm
    norm_m = layer.post_attention_layernorm if neox else layer.input_layernorm

    def attn(x, ctx):
        r = _first(attn_mod(norm_a(x), **layer_kwargs(ctx, layer)))
        return r if drop_a is None else drop_a(r)

    def mlp(x):
        r = _first(layer.mlp(norm_m(x)))
        return r if drop_m is None else drop_m(r)

    return BlockParts(branches=(Branch(attn, name="attn", context=True), Branch(mlp, name="mlp")))


# ---- the stem: what the model passes every layer ---------------------------------------------

class LayerStem:
    """inputs -> (h, ctx): the model's own forward up to its first layer (h: the stream entering
    it, (N, T, d)), and ctx = {PER_LAYER: {layer: the keyword arguments the model passes it}}.

    While it runs, every layer's forward is replaced by a stand-in that records its arguments
    and returns the stream unchanged (no layer computes), and the last one stops the forward
    (the final norm and the head do not run either); the layers are restored afterwards. So a
    family whose layers get different masks (sliding-window layers) or rotary tables (Gemma3's
    local and global layers) gives each its own, as the model builds them.
    """

    def __init__(self, model: nn.Module, layers: list):
        self.model, self.layers = model, list(layers)

    def __call__(self, inputs):
        calls, last = {}, self.layers[-1]

        def stand_in(layer):
            def forward(*args, **kwargs):
                calls[layer] = (args, kwargs)
                if layer is last:
                    raise Reached(None, None)
                return args[0] if args else next(iter(kwargs.values()))
            return forward

        saved = {layer: layer.__dict__.get("forward") for layer in self.layers}
        for layer in self.layers:
            layer.forward = stand_in(layer)
        try:
            call_model(self.model, inputs)
        except Reached:
            pass
        finally:
            for layer, old in saved.items():
                if old is None:
                    del layer.forward
                else:
                    layer.forward = old
        missing = [i for i, layer in enumerate(self.layers) if layer not in calls]
        if missing:
            raise WrapError(f"{type(self.model).__name__}.forward never calls its layer "
                            f"{missing[0]} ({type(self.layers[missing[0]]).__name__})")
        per_layer = {}
        for layer in self.layers:
            h_i, kw = block_call(layer, *calls[layer])
            per_layer[layer] = {k: v for k, v in kw.items() if k not in _CACHE}
            if layer is self.layers[0]:
                h = h_i
        if not torch.is_tensor(h):
            raise WrapError(f"the first layer of {type(self.model).__name__} receives "
                            f"{type(h).__name__}, not a tensor")
        return h, {PER_LAYER: per_layer}


# ---- the model: layers, head ------------------------------------------------------------------

_NORMS = ("norm", "final_layernorm", "final_layer_norm", "ln_f")


def decoder_lm(model: nn.Module) -> ModelParts:
    """ModelParts of a Hugging Face causal LM whose layers have a decoder layout."""
    cls = type(model).__name__
    base = getattr(model, "base_model", None)
    dec = getattr(base, "decoder", base)  # OPT: model.model.decoder
    layers = getattr(dec, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise WrapError(f"{cls}: no decoder layers found (looked for base_model.layers and "
                        f"base_model.decoder.layers); register a model adapter for it")
    kinds = {layout(layer) for layer in layers}
    if None in kinds or len(kinds) > 1:
        bad = next(layer for layer in layers if layout(layer) != layout(layers[0])) \
            if len(kinds) > 1 else next(layer for layer in layers if layout(layer) is None)
        raise WrapError(f"{cls}: its {type(bad).__name__} does not have a decoder layout "
                        f"pathens knows (self_attn, mlp and the norms of Llama, Gemma2, OLMo2, OPT "
                        f"or GPT-NeoX){' consistent over the layers' if len(kinds) > 1 else ''}; "
                        f"register a block adapter for it")
    norm = next((getattr(dec, n) for n in _NORMS if isinstance(getattr(dec, n, None), nn.Module)),
                None)
    if norm is None and not (kinds == {"opt"} and not layers[0].do_layer_norm_before):
        raise WrapError(f"{cls}: no final norm found after its layers (looked for "
                        f"{', '.join(_NORMS)}); register a model adapter for it")
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(lm_head, nn.Module):
        raise WrapError(f"{cls}: no output embedding (lm_head) found: pathens wraps causal "
                        f"language models (…ForCausalLM) of this family")
    project_out = getattr(dec, "project_out", None)  # OPT-350m: d -> word_embed_proj_dim
    config = model.config
    cap = getattr(config, "final_logit_softcapping", None)
    scaling = getattr(config, "logits_scaling", None)  # Granite: logits / logits_scaling
    logit_scale = getattr(model, "logit_scale", None)  # Cohere: logits * logit_scale

    def head(h):
        if norm is not None:
            h = norm(h)
        if project_out is not None:
            h = project_out(h)
        logits = lm_head(h)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        if scaling and scaling != 1:
            logits = logits / scaling
        if isinstance(logit_scale, (int, float)) and logit_scale != 1:
            logits = logits * logit_scale
        return logits

    max_length = getattr(config, "max_position_embeddings", None)
    return ModelParts(blocks=list(layers), head=head, stem=LayerStem(model, layers),
                      loss="next_token", vocab_size=config.vocab_size, max_length=max_length,
                      example_input=token_probe(config, min(16, max_length or 16)),
                      info={"layout": kinds.pop()})


def register(model_class: type, layer_class: Optional[type] = None, *, builtin: bool = False):
    """Use the structural adapter for another Hugging Face causal LM (and its layer class)."""
    register_model(model_class, decoder_lm, builtin=builtin)
    if layer_class is not None:
        register_block(layer_class, decoder_layer, builtin=builtin)


# (transformers module, causal LM class, decoder layer class): each tested in
# tests/test_llm_families.py
FAMILIES = (
    ("llama", "LlamaForCausalLM", "LlamaDecoderLayer"),
    ("mistral", "MistralForCausalLM", "MistralDecoderLayer"),
    ("qwen2", "Qwen2ForCausalLM", "Qwen2DecoderLayer"),
    ("qwen3", "Qwen3ForCausalLM", "Qwen3DecoderLayer"),
    ("gemma", "GemmaForCausalLM", "GemmaDecoderLayer"),
    ("gemma2", "Gemma2ForCausalLM", "Gemma2DecoderLayer"),
    ("gemma3", "Gemma3ForCausalLM", "Gemma3DecoderLayer"),
    ("phi3", "Phi3ForCausalLM", "Phi3DecoderLayer"),
    ("granite", "GraniteForCausalLM", "GraniteDecoderLayer"),
    ("olmo", "OlmoForCausalLM", "OlmoDecoderLayer"),
    ("olmo2", "Olmo2ForCausalLM", "Olmo2DecoderLayer"),
    ("smollm3", "SmolLM3ForCausalLM", "SmolLM3DecoderLayer"),
    ("starcoder2", "Starcoder2ForCausalLM", "Starcoder2DecoderLayer"),
    ("stablelm", "StableLmForCausalLM", "StableLmDecoderLayer"),
    ("opt", "OPTForCausalLM", "OPTDecoderLayer"),
    ("gpt_neox", "GPTNeoXForCausalLM", "GPTNeoXLayer"),
    ("phi", "PhiForCausalLM", "PhiDecoderLayer"),
    ("cohere", "CohereForCausalLM", "CohereDecoderLayer"),
)
missing: dict = {}  # class name -> why this transformers lacks it

for _module, _model, _layer in FAMILIES:
    try:
        _mod = importlib.import_module(f"transformers.models.{_module}.modeling_{_module}")
        register(getattr(_mod, _model), getattr(_mod, _layer), builtin=True)
    except (ImportError, AttributeError) as _err:  # an older transformers: that family is absent
        missing[_model] = str(_err)
