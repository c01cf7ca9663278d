"""Messages that point the right way (issue 18, item 4): token targets under the
classification loss name loss="next_token"; a sequence longer than the context read from the
model's position embedding is refused in one line (not an IndexError deep in the model); blocks
listed out of order in a model adapter are called that (not blamed on the stem); a model with
no known block hears every family pathens supports, and whether it adds tensors at all
(DenseNet, a plain CNN)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pathens
from pathens import lesion


class MsgLayer(nn.Module):
    """Pre-LN transformer layer, causal attention: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, d=8):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def attn(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def mlp(self, x):
        return self.fc2(F.gelu(self.fc1(x)))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


pathens.register_block(MsgLayer, lambda layer: [
    pathens.BlockParts(name="attn", branch=lambda x: layer.attn(layer.ln1(x))),
    pathens.BlockParts(name="mlp", branch=lambda x: layer.mlp(layer.ln2(x)))])


class FxGPT(nn.Module):
    """A GPT torch.fx traces: only its layer is registered, so the view's loss is the default
    (classification) and no adapter states its context (16 positions)."""

    def __init__(self, vocab=11, d=8, n=2, context=16):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.layers = nn.ModuleList(MsgLayer(d) for _ in range(n))
        self.ln, self.out = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for layer in self.layers:
            x = layer(x)
        return self.out(self.ln(x))


def ids(n=4, t=12, seed=0):
    return torch.randint(0, 11, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fx_view():
    torch.manual_seed(0)
    model = FxGPT().double().eval()
    view = pathens.wrap(model, example_input=ids(2))
    assert view.source == "torch.fx" and view.loss == "classification"
    return view


def test_token_targets_under_the_classification_loss_name_next_token(fx_view):
    x = ids()
    for call in (lambda: pathens.path_gradients(fx_view, x, x, progress=False),
                 lambda: lesion.evaluate(fx_view, (x, x))):
        with pytest.raises(pathens.PathensError, match=r"targets of shape \(4, 12\), the token "
                                                       r"inputs' own.*loss='next_token'"):
            call()
    # and the loss it names is the right one: the model's own next-token cross-entropy
    row = lesion.evaluate(fx_view, (x, x), loss="next_token")
    with torch.no_grad():
        logits = fx_view.model(x)
    direct = F.cross_entropy(logits[:, :-1].reshape(-1, 11), x[:, 1:].reshape(-1))
    assert row["n"] == 4 * 11 and row["loss"] == pytest.approx(float(direct), rel=1e-12)


def test_a_sequence_longer_than_the_position_embedding_is_refused_in_one_line(fx_view):
    assert fx_view.max_length == fx_view.model.pos.num_embeddings == 16
    long = ids(2, 20)
    with pytest.raises(IndexError):  # what the model itself does with it
        fx_view.model(long)
    with pytest.raises(pathens.PathensError, match="sequences of 20 tokens are longer than the "
                                                   "model's context of 16"):
        lesion.evaluate(fx_view, (long, long), loss="next_token")
    assert lesion.evaluate(fx_view, (ids(2, 16), ids(2, 16)), loss="next_token")["n"] == 30


def test_context_is_read_only_when_unambiguous():
    from pathens.view.context_length import infer_context

    class Two(nn.Module):
        def __init__(self, a, b):
            super().__init__()
            self.wpe, self.position_bias = nn.Embedding(a, 4), nn.Parameter(torch.zeros(1, b, 4))

    assert infer_context(Two(7, 7)) == 7
    assert infer_context(Two(7, 9)) is None  # two sizes: nothing claimed
    assert infer_context(nn.Sequential(nn.Embedding(5, 3))) is None  # no position in its name

    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_positions = nn.Embedding(12, 4)
            self.transposed = nn.Parameter(torch.zeros(3, 4))  # "pos" inside a word: not one

    assert infer_context(Named()) == 12


class Ordered(FxGPT):
    pass


def test_blocks_listed_out_of_order_are_called_that():
    pathens.register_model(Ordered, lambda m: pathens.ModelParts(
        blocks=[m.layers[1], m.layers[0]], head=lambda h: m.out(m.ln(h)), loss="next_token"))
    torch.manual_seed(0)
    with pytest.raises(pathens.WrapError, match=r"the blocks of Ordered are listed in another "
                                                r"order than its forward runs them: layers\.1 is "
                                                r"listed at position 0, where the model runs "
                                                r"layers\.0") as e:
        pathens.wrap(Ordered().double(), example_input=ids(2))
    assert "stem" not in str(e.value)
    pathens.register_model(Ordered, lambda m: pathens.ModelParts(
        blocks=list(m.layers), head=lambda h: m.out(m.ln(h)), loss="next_token"))
    assert pathens.wrap(Ordered().double(), example_input=ids(2)).num_blocks == 4


FAMILIES = ("cifar_resnet", "torchvision's ResNets", "VisionTransformer", "timm's ResNets",
            "GPT2LMHeadModel", "BertForSequenceClassification", "ResNetForImageClassification")


def test_a_densenet_and_a_plain_cnn_have_no_residual_additions():
    import torchvision
    torch.manual_seed(0)
    dense = torchvision.models.DenseNet(growth_rate=4, block_config=(1, 1), num_init_features=8,
                                        bn_size=2, num_classes=3).eval()
    with pytest.raises(pathens.WrapError) as e:
        pathens.wrap(dense)  # no example_input: a probe is made for a torchvision CNN
    said = str(e.value)
    # the DenseNet adapter (adapters/torchvision_densenet.py) says why, before the generic check
    assert "\n" not in said and said.startswith("DenseNet has no residual blocks")
    assert "concatenate" in said and "allow_plain=True" in said
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                          nn.Linear(64, 2))
    with pytest.raises(pathens.WrapError, match="Sequential has no residual additions at all "
                                                r"\(.*a plain stack of layers\)"):
        pathens.wrap(plain, example_input=torch.randn(2, 3, 8, 8))


class OwnBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc(x)


def test_a_residual_model_of_unknown_blocks_is_told_to_register_them():
    model = nn.Sequential(nn.Linear(3, 4), OwnBlock(), OwnBlock(), nn.Linear(4, 2))
    with pytest.raises(pathens.WrapError) as e:
        pathens.wrap(model, example_input=torch.randn(2, 3))
    said = str(e.value)
    assert said.startswith("Sequential has no residual blocks pathens knows")
    assert "register your block class with pathens.register_block" in said
    assert all(f in said for f in FAMILIES) and "no residual additions" not in said


def test_readme_builds_positions_on_the_inputs_device():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    calls = re.findall(r"torch\.arange\([^()]*(?:\([^()]*\)[^()]*)*\)", readme)
    assert calls and all("device=" in c for c in calls), calls
