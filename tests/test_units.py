"""One notion of unit (issue 15, item 3): view.units("block" | "layer") is the one derivation of
what a lesion deletes and Block Influence scores, checked against the model's own modules
(named_modules, by identity: never the block names); lesion results record the layers, old
results without them still work, and every consumer (lesion.units, importance, the
lesion-based effective depth, the figures' positions) reads the same units."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import pathens
from pathens import lesion
from pathens.errors import PathensError
from pathens.measure.depth import effective_depth
from pathens.measure.importance import block_influence
from pathens.report.plots.lesion import positions
from pathens.view import Unit

D = 6


class Pair(nn.Module):
    """Two residual blocks in one module, their parts unnamed (the view calls them 0 and 1)."""

    def __init__(self):
        super().__init__()
        self.f, self.g = nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x):
        x = x + self.f(x)
        return x + self.g(x)


class Solo(nn.Module):
    """One residual block whose part is named ("ffn")."""

    def __init__(self):
        super().__init__()
        self.ffn = nn.Linear(D, D)

    def forward(self, x):
        return x + self.ffn(x)


pathens.register_block(Pair, lambda m: [pathens.BlockParts(branch=m.f),
                                        pathens.BlockParts(branch=m.g)])
pathens.register_block(Solo, lambda m: [pathens.BlockParts(name="ffn", branch=m.ffn)])


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Linear(4, D), nn.Linear(D, 3)
        self.body = nn.ModuleList([Pair(), Solo(), Pair()])

    def forward(self, x):
        h = self.stem(x)
        for m in self.body:
            h = m(h)
        return self.head(h)


def modules_of(model, view) -> list:
    """From the model itself: per module holding blocks (by identity), its name in
    named_modules and the indices of the view's blocks whose module it is, in order."""
    names = {id(m): n for n, m in model.named_modules()}
    out: dict = {}
    for b in view.blocks:
        out.setdefault(id(b.module), (names[id(b.module)], []))[1].append(b.index)
    return [Unit(n, tuple(ix)) for n, ix in out.values()]


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model = Toy().double().eval()
    view = pathens.wrap(model, example_input=torch.zeros(2, 4, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    data = torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,),
                                                                               generator=g)
    return model, view, data


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    model = pathens.gpt(depth=3, width=16, heads=2, context=8, vocab_size=11).double().eval()
    ids = torch.randint(0, 11, (4, 8), generator=torch.Generator().manual_seed(2))
    return model, pathens.wrap(model), (ids, ids)


def test_units_are_the_models_own_modules(toy, gpt):
    for model, view, _ in (toy, gpt):
        assert view.units("layer") == modules_of(model, view)
        assert view.units("block") == [Unit(b.name, (b.index,)) for b in view.blocks]
        assert view.units() == view.units("block")
    # unnamed parts and a one-block module with a named part are named by their module too
    assert [u.name for u in toy[1].units("layer")] == ["body.0", "body.1", "body.2"]
    assert [b.name for b in toy[1].blocks] == ["body.0.0", "body.0.1", "body.1.ffn", "body.2.0",
                                               "body.2.1"]
    assert [u.name for u in gpt[1].units("layer")] == ["h.0", "h.1", "h.2"]
    assert lesion.units(toy[1], "layer") == [(0, 1), (2,), (3, 4)]
    assert lesion.units(toy[1]) == [(i,) for i in range(5)]


def test_a_unit_that_is_neither_is_refused_in_one_line(toy):
    for call in (lambda: toy[1].units("sublayer"), lambda: lesion.units(toy[1], "sublayer")):
        with pytest.raises(PathensError, match=r"^unit must be 'block' or 'layer', got "
                                               r"'sublayer'$"):
            call()


def test_lesion_results_record_the_layers_and_every_consumer_reads_them(toy):
    model, view, data = toy
    each = lesion.delete_each(view, data, unit="layer", progress=False)
    layers = modules_of(model, view)
    assert list(each.layers) == layers and each.units() == layers
    assert each.units("block") == view.units("block")
    # the rows delete exactly those units
    assert [tuple(r["deleted"]) for r in each.rows if r["kind"] == "delete"] == \
        [u.blocks for u in layers]
    # the figures: every block at its layer's index, the axis naming the layers
    assert positions(each) == ({0: 0, 1: 0, 2: 1, 3: 2, 4: 2}, ["body.0", "body.1", "body.2"])
    # the lesion-based effective depth counts layers (3), not blocks (5)
    rand = lesion.delete_random(view, data, ks=[1, 2], trials=2, unit="layer", progress=False)
    assert effective_depth(rand, margin=0.5).num_blocks == 3
    blocks = lesion.delete_random(view, data, ks=[1], trials=1, progress=False)
    assert effective_depth(blocks, margin=0.5).num_blocks == 5
    # JSON is what it was: the layers stay out of it (block_names and sublayers give them)
    d = each.to_dict()
    assert "layers" not in d and set(d) == {f.name for f in dataclasses.fields(each)} - {"layers"}
    each.to_json()


def test_a_result_made_before_layers_were_recorded_still_has_its_units(gpt):
    model, view, data = gpt
    each = lesion.delete_each(view, data, unit="layer", progress=False)
    old = dataclasses.replace(each, layers=())
    assert old.units() == each.units() == modules_of(model, view)
    assert positions(old) == positions(each)
    rand = lesion.delete_random(view, data, ks=[1], trials=1, unit="layer", progress=False)
    assert effective_depth(dataclasses.replace(rand, layers=()), margin=0.5).num_blocks == \
        effective_depth(rand, margin=0.5).num_blocks == 3


def test_block_influence_scores_the_views_units(toy, gpt):
    for model, view, data in (toy, gpt):
        for unit in ("layer", "block"):
            bi = block_influence(view, data[0], unit=unit)
            units = view.units(unit)
            assert bi.names == tuple(u.name for u in units)
            assert bi.blocks == tuple(u.blocks for u in units)
