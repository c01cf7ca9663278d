"""Hugging Face BERT (BertForSequenceClassification), a post-LN encoder: every BertLayer holds
two residual blocks, LN(x + dense(self_attn(x))) then LN(x + dense(ffn(x))), whose post is
the LayerNorm (its Jacobian is P_i, as ReLU's in the original ResNet); the head is the pooler,
then the classifier."""
from __future__ import annotations

from transformers.models.bert import modeling_bert as bert

from ..errors import WrapError
from . import BlockParts, ModelParts, register_block, register_model
from .hf_common import attention_mask, token_probe


@register_block(bert.BertLayer, builtin=True)
def bert_layer(layer) -> list:
    if getattr(layer, "crossattention", None) is not None:
        raise WrapError("BERT layers with cross-attention are not supported")
    att, out = layer.attention, layer.output

    def attention(x, ctx):
        a = att.self(x, attention_mask=attention_mask(ctx))[0]
        return att.output.dropout(att.output.dense(a))

    return [BlockParts(name="attn", context=True, branch=attention, post=att.output.LayerNorm),
            BlockParts(name="mlp", post=out.LayerNorm,
                       branch=lambda x: out.dropout(out.dense(layer.intermediate(x))))]


@register_model(bert.BertForSequenceClassification, builtin=True)
def bert_classifier(model) -> ModelParts:
    b, config = model.bert, model.config
    if b.pooler is None:
        raise WrapError("BertForSequenceClassification without its pooler cannot be wrapped")
    return ModelParts(blocks=list(b.encoder.layer),
                      head=lambda h: model.classifier(model.dropout(b.pooler(h))),
                      vocab_size=config.vocab_size, max_length=config.max_position_embeddings,
                      example_input=token_probe(config, min(16, config.max_position_embeddings)))
