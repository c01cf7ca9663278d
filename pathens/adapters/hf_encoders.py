"""Hugging Face encoders beyond BERT, each two residual blocks per layer (attention, then MLP):

- RoBERTa (RobertaForSequenceClassification): BERT's post-LN layer under its own class name
  (the same adapter: post = the sublayer's LayerNorm); the head is RoBERTa's classification
  head on the first token (no pooler). Its positions start after the padding id, so the
  longest sequence is max_position_embeddings - pad_token_id - 1 (512 for roberta-base).
- DistilBERT (DistilBertForSequenceClassification): post-LN, LN(x + attention(x)) with
  sa_layer_norm, then LN(x + ffn(x)) with output_layer_norm; the head is pre_classifier,
  ReLU, classifier on the first token.
- ViT (ViTForImageClassification): pre-LN, x + attention(layernorm_before(x)) then
  x + mlp(layernorm_after(x)) (dropout after each); the head is the final layernorm, then the
  classifier on the CLS token.

The stem of each is the model's own forward up to its first layer (captured, with the
attention mask it builds)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.distilbert import modeling_distilbert as distilbert
from transformers.models.roberta import modeling_roberta as roberta
from transformers.models.vit import modeling_vit as vit

from . import BlockParts, ModelParts, register_block, register_model
from .hf_bert import bert_layer
from .hf_common import attention_mask, token_probe

register_block(roberta.RobertaLayer, bert_layer, builtin=True)


@register_model(roberta.RobertaForSequenceClassification, builtin=True)
def roberta_classifier(model) -> ModelParts:
    r, config = model.roberta, model.config
    length = config.max_position_embeddings - (config.pad_token_id or 0) - 1
    return ModelParts(blocks=list(r.encoder.layer), head=model.classifier,
                      vocab_size=config.vocab_size, max_length=length,
                      example_input=_probe(config, min(16, length)))


def _probe(config, length):
    """Token ids that avoid the padding id (RoBERTa numbers positions around it)."""
    ids = token_probe(config, length)
    pad = config.pad_token_id

    def probe():
        x = ids()
        return x if pad is None else x.masked_fill(x == pad, (pad + 1) % config.vocab_size)
    return probe


@register_block(distilbert.TransformerBlock, builtin=True)
def distilbert_block(block) -> list:
    def attention(x, ctx):
        return block.attention(x, attention_mask=attention_mask(ctx))[0]

    return [BlockParts(name="attn", context=True, branch=attention, post=block.sa_layer_norm),
            BlockParts(name="mlp", branch=block.ffn, post=block.output_layer_norm)]


@register_model(distilbert.DistilBertForSequenceClassification, builtin=True)
def distilbert_classifier(model) -> ModelParts:
    d, config = model.distilbert, model.config

    def head(h):
        return model.classifier(model.dropout(F.relu(model.pre_classifier(h[:, 0]))))

    return ModelParts(blocks=list(d.transformer.layer), head=head, vocab_size=config.vocab_size,
                      max_length=config.max_position_embeddings,
                      example_input=token_probe(config, min(16, config.max_position_embeddings)))


@register_block(vit.ViTLayer, builtin=True)
def vit_layer(layer) -> list:
    def attention(x, ctx):
        return layer.dropout(layer.attention(layer.layernorm_before(x), attention_mask(ctx))[0])

    def mlp(x):
        return layer.dropout(layer.mlp(layer.layernorm_after(x)))

    return [BlockParts(name="attn", context=True, branch=attention),
            BlockParts(name="mlp", branch=mlp)]


@register_model(vit.ViTForImageClassification, builtin=True)
def vit_classifier(model) -> ModelParts:
    v, config = model.vit, model.config
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]

    def probe():
        g = torch.Generator().manual_seed(0)
        return torch.randn(2, config.num_channels, size, size, generator=g)

    layers = v.layers if hasattr(v, "layers") else v.encoder.layer  # transformers 5: v.layers
    return ModelParts(blocks=list(layers), example_input=probe,
                      head=lambda h: model.classifier(v.layernorm(h)[:, 0, :]))
