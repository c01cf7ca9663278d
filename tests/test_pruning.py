"""What layer-pruning users do next (issue 17, item 5): export the pruned model
(view.pruned, pathens/view/prune.py), the peers' importance scores alone (`pathens
importance`), top-5 error in lesion rows.

Oracles: the model itself edited by hand, independently of pathens (forward hooks that make a
deleted layer return its input and a deleted sublayer return zeros, on a deep copy of the
intact model; a torchvision block replaced by relu(downsample(x)) written here); the pruned
model's own greedy generation with and without its KV cache against the hand-edited model's;
save_pretrained -> from_pretrained (local folder) and pathens checkpoints written and read
back; torch.topk for the top-5 error. Tiny random models, float64."""
from __future__ import annotations

import copy

import numpy as np

import pytest
import torch
from torch import nn

import pathens
from pathens.errors import PathensError

T = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VOCAB = 100
DEC = dict(num_hidden_layers=3, hidden_size=32, intermediate_size=64, num_attention_heads=4,
           num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=40,
           initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
OPT = dict(num_hidden_layers=3, hidden_size=32, ffn_dim=64, num_attention_heads=4,
           vocab_size=VOCAB, max_position_embeddings=40, init_std=0.2, word_embed_proj_dim=32,
           pad_token_id=0, bos_token_id=1, eos_token_id=2)

# family -> (model class, config class, config, the layer list, the attention and MLP
# sublayer modules of a layer (what a hand edit zeroes))
LMS = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", DEC, "model.layers", "self_attn", "mlp"),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig",
               dict(DEC, head_dim=8, sliding_window=4,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
               "model.layers", "self_attn", "mlp"),
    "smollm3": ("SmolLM3ForCausalLM", "SmolLM3Config", dict(DEC, no_rope_layers=[1, 0, 1]),
                "model.layers", "self_attn", "mlp"),
    "opt_post": ("OPTForCausalLM", "OPTConfig", dict(OPT, do_layer_norm_before=False),
                 "model.decoder.layers", "self_attn", "fc2"),
    "neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(DEC, use_parallel_residual=False),
             "gpt_neox.layers", "attention", "mlp"),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config",
             dict(n_layer=3, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=40,
                  bos_token_id=1, eos_token_id=2), "transformer.h", "attn", "mlp"),
}


def build_lm(name: str, seed: int = 0):
    cls, config_cls, kw, *_ = LMS[name]
    torch.manual_seed(seed)
    model = getattr(T, cls)(getattr(T, config_cls)(**kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # norms that are not the plain standardisation
        for m in model.modules():
            if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None:
                m.weight.copy_(0.7 + 0.6 * torch.rand(m.weight.shape, generator=g))
    return model.double().eval()


def tokens(n=2, t=12, seed=1):
    return torch.randint(3, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def _returns_input(module, args, kwargs, out):
    """A forward hook: the layer returns the stream it received (the whole layer deleted)."""
    h = args[0] if args else kwargs["hidden_states"]
    return (h, *out[1:]) if isinstance(out, tuple) else h


def _returns_zeros(module, args, out):
    """A forward hook: the sublayer returns zeros (its branch deleted)."""
    return (torch.zeros_like(out[0]), *out[1:]) if isinstance(out, tuple) else \
        torch.zeros_like(out)


def hand_edited(model, drop: list, zero: list):
    """A deep copy of the intact model with the layers named in `drop` returning their input
    and the sublayer modules named in `zero` returning zeros."""
    edited = copy.deepcopy(model)
    for path in drop:
        edited.get_submodule(path).register_forward_hook(_returns_input, with_kwargs=True)
    for path in zero:
        edited.get_submodule(path).register_forward_hook(_returns_zeros)
    return edited


# ---- view.pruned: Hugging Face language models ------------------------------------------------

@pytest.mark.parametrize("name", list(LMS))
def test_pruned_language_model_is_its_own_class_and_equals_the_hand_edited_model(name):
    """Layer 1 deleted whole, and layer 0's MLP alone: the model of its own class equals a hand
    edit of the intact model (and the view's lesion), in its logits and in greedy generation,
    with the KV cache and without."""
    model = build_lm(name)
    _, _, _, layers, attn, mlp = LMS[name]
    view = pathens.wrap(model)
    pruned = view.pruned([f"{layers}.1", f"{layers}.0.mlp"])
    assert type(pruned) is type(model) and pruned is not model
    if name == "opt_post":  # post-LN: without its branches a layer is LN2(LN1(x)), not x
        edited = hand_edited(model, [], [f"{layers}.1.{attn}", f"{layers}.1.{mlp}",
                                         f"{layers}.0.{mlp}"])
    else:
        edited = hand_edited(model, [f"{layers}.1"], [f"{layers}.0.{mlp}"])
    x = tokens()
    with torch.no_grad():
        want = edited(x).logits
        torch.testing.assert_close(pruned(x).logits, want, rtol=0, atol=1e-12)
        torch.testing.assert_close(view.run(x, deleted=[1, 2, 3]), want, rtol=0, atol=1e-12)
        assert (model(x).logits - want).abs().max() > 1e-3  # the edit changes the model
    prompt = tokens(t=6, seed=2)
    greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    out = pruned.generate(prompt, **greedy)
    assert torch.equal(out, pruned.generate(prompt, use_cache=False, **greedy))
    assert torch.equal(out, edited.generate(prompt, **greedy))
    if name == "opt_post":  # post-LN: a deleted layer computes LN2(LN1(x)): zeroed, not removed
        assert pruned.config.num_hidden_layers == 3
        assert torch.count_nonzero(pruned.model.decoder.layers[1].fc2.weight) == 0
    else:
        kept = pruned.get_submodule(layers)
        assert pruned.config.num_hidden_layers == len(kept) == 2
        assert [getattr(layer, attn).layer_idx for layer in kept] == [0, 1]
    if name == "gemma3":
        assert pruned.config.layer_types == ["sliding_attention", "sliding_attention"]
    if name == "smollm3":  # one flag per layer: the kept layers' own
        assert pruned.config.no_rope_layers == [1, 1]


@pytest.mark.parametrize("name", ["llama", "smollm3", "gpt2", "opt_post"])
def test_save_pretrained_then_from_pretrained_reproduces_the_pruned_model(name, tmp_path):
    model = build_lm(name)
    layers = LMS[name][3]
    pruned = pathens.wrap(model).pruned([f"{layers}.0", f"{layers}.2.attn"])
    pruned.save_pretrained(tmp_path)
    again = T.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True,
                                                   dtype=torch.float64).eval()
    assert type(again) is type(model)
    assert again.config.num_hidden_layers == pruned.config.num_hidden_layers
    x = tokens()
    with torch.no_grad():
        assert torch.equal(again(x).logits, pruned(x).logits)


def test_pruning_does_not_touch_the_model_or_its_view():
    model = build_lm("llama")
    view = pathens.wrap(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    view.pruned(["model.layers.1", 0])
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(view(x), model(x).logits, rtol=0, atol=0)


# ---- view.pruned: CNNs and pathens's own models ------------------------------------------------

def test_pruned_torchvision_resnet_bypasses_a_downsampling_block():
    """resnet18: block 2 (layer2.0, a projection shortcut) bypassed, relu(downsample(x)),
    its branch's parameters gone; block 3 (identity shortcut after a ReLU) removed."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=10).double().eval()
    view = pathens.wrap(model)
    pruned = view.pruned([2, 3])
    edited = copy.deepcopy(model)
    down = edited.layer2[0].downsample
    edited.layer2[0].register_forward_hook(lambda m, a, out: torch.relu(down(a[0])))
    edited.layer2[1].register_forward_hook(lambda m, a, out: a[0])
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), edited(x), rtol=0, atol=1e-12)
    assert len(pruned.layer2) == 1 and type(pruned.layer2[0]).__name__ == "Bypass"
    branch = sum(p.numel() for n, p in model.layer2.named_parameters()
                 if not n.startswith("0.downsample"))
    assert sum(p.numel() for p in pruned.parameters()) == \
        sum(p.numel() for p in model.parameters()) - branch
    # the pruned model is a network pathens wraps (the Bypass a plain layer)
    again = pathens.wrap(pruned, allow_plain=True)
    assert again.num_blocks == 7 and not again.blocks[2].residual


def test_how_zero_keeps_the_state_dict_and_a_pathens_checkpoint_rebuilds_it(tmp_path):
    from pathens.models import checkpoints
    torch.manual_seed(0)
    model = pathens.cifar_resnet(20, norm="skipinit", alpha_init=0.5).double().eval()
    view = pathens.wrap(model)
    pruned = view.pruned([1, 3, 8], how="zero")
    assert pruned.state_dict().keys() == model.state_dict().keys()
    assert all(pruned.get_submodule(view.blocks[i].name).alpha.item() == 0 for i in (1, 3, 8))
    path = checkpoints.save_checkpoint(tmp_path / "p.pt", pruned, dataset="cifar10", seed=0)
    again, _ = checkpoints.load(path)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(again.double()(x), view.run(x, deleted=[1, 3, 8]),
                                   rtol=0, atol=1e-12)
        removed = view.pruned([1, 3, 8])  # "remove": 1 and 8 leave, 3 (zero-pad) is bypassed
    assert sum(len(s) for s in (removed.layer1, removed.layer2, removed.layer3)) == 7
    assert type(removed.layer2[0]).__name__ == "Bypass"


def test_pruned_pathens_gpt_saves_a_checkpoint_of_fewer_layers(tmp_path):
    from pathens.models import checkpoints
    torch.manual_seed(0)
    model = pathens.gpt(depth=3, width=32, heads=4, context=16, vocab_size=50).double().eval()
    view = pathens.wrap(model)
    pruned = view.pruned(["h.1", "h.2.attn"])
    assert len(pruned.h) == 2 and pruned.config["depth"] == 2 and model.config["depth"] == 3
    path = checkpoints.save_checkpoint(tmp_path / "g.pt", pruned, dataset="text", seed=0)
    again, meta = checkpoints.load(path)
    assert meta["arch"]["depth"] == 2
    x = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(again.double()(x), view.run(x, deleted=["h.1", "h.2.attn"]),
                                   rtol=0, atol=1e-12)


# ---- view.pruned: bad input --------------------------------------------------------------------

class Twice(nn.Module):
    """Two residual sublayers; the second's branch is exp(lin(x)), which no zeroed layer
    makes zero."""

    def __init__(self, d=8):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        x = x + self.a(x)
        return x + torch.exp(self.b(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Twice(), Twice()])
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def _twice_parts(m):
    return [pathens.BlockParts(name="a", branch=m.a),
            pathens.BlockParts(name="b", branch=lambda x: torch.exp(m.b(x)))]


def test_pruned_refuses_what_it_cannot_export(monkeypatch):
    from pathens.view import prune
    pathens.register_block(Twice, _twice_parts)
    torch.manual_seed(0)
    net = Net().double().eval()
    view = pathens.wrap(net, example_input=torch.randn(4, 8, dtype=torch.float64))
    with pytest.raises(PathensError, match=r"blocks\.0\.b cannot be bypassed.*delete the whole "
                                           r"module \(blocks\.0\)"):
        view.pruned(["blocks.0.b"])
    whole = view.pruned(["blocks.0"])  # the whole module: removed from its list
    assert len(whole.blocks) == 1
    with pytest.raises(PathensError, match="how must be 'remove' or 'zero'"):
        view.pruned([0], how="drop")
    with pytest.raises(PathensError, match="no block or module is named 'blocks.7'"):
        view.pruned(["blocks.7"])
    monkeypatch.setattr(prune, "_remove", lambda model, names: None)  # a removal that fails
    with pytest.raises(PathensError, match=r"does not reproduce the view with blocks \[0, 1\] "
                                           r"deleted on the probe \(largest difference"):
        view.pruned(["blocks.0"])
    view.probe = None
    with pytest.raises(PathensError, match="keeps no probe batch; pass example_input="):
        view.pruned([0])


# ---- pathens importance ------------------------------------------------------------------------

def _llama_folder(path):
    torch.manual_seed(0)
    config = T.LlamaConfig(num_hidden_layers=4, hidden_size=32, intermediate_size=64,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                           max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    T.LlamaForCausalLM(config).save_pretrained(path)
    (path / "special_tokens_map.json").write_text("{}")  # a side file the export carries
    return path


def test_importance_command_scores_and_exports_a_hugging_face_folder(capsys, tmp_path):
    import csv
    import json
    from cli_helpers import run
    from pathens.measure.importance import angular_distance
    folder = _llama_folder(tmp_path / "llama")
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    out, export = tmp_path / "out", tmp_path / "pruned"
    code, printed, err = run(capsys, "importance", "--arch", f"hf:{folder}", "--data", "text",
                             "--root", text, "--seq-len", "16", "--limit", "6", "--score",
                             "angular", "--n", "2", "--out", out, "--export", export)
    assert code == 0, err
    model = T.LlamaForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    ids, _ = pathens.load_corpus(text).windows("test", seq_len=16, limit=6)
    view = pathens.wrap(model)
    want = angular_distance(view, ids, n=2)  # a language model: the last token by default
    assert want.config["positions"] == "last"
    rows = list(csv.DictReader((out / "angular_distance_n2.csv").open()))
    assert [float(r["distance"]) for r in rows] == pytest.approx(want.distance, rel=1e-12)
    assert [r["remove"] for r in rows] == [str(i == want.best) for i in range(3)]
    summary = json.loads((out / "angular_distance_n2.json").read_text())
    assert summary["remove"] == list(want.pruned)
    assert "remove (2 layers): " + ", ".join(want.pruned) in printed
    # the export: the model's own class without those layers, loadable by transformers alone
    again = T.AutoModelForCausalLM.from_pretrained(export, local_files_only=True).eval()
    assert type(again) is T.LlamaForCausalLM and again.config.num_hidden_layers == 2
    assert (export / "special_tokens_map.json").read_text() == "{}"
    assert json.loads((export / "pruned.json").read_text())["deleted_blocks"] == \
        [f"{name}.{sub}" for name in want.pruned for sub in ("attn", "mlp")]
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, view.run(ids, deleted=list(want.pruned)),
                                   rtol=1e-5, atol=1e-5)


def test_importance_command_block_influence_of_a_pathens_checkpoint(capsys, tmp_path):
    import csv
    from cli_helpers import checkpoint, run
    from pathens.measure.importance import block_influence
    from pathens.models import checkpoints
    ckpt = checkpoint(tmp_path / "c.pt", depth=14)
    out, export = tmp_path / "out", tmp_path / "pruned"
    code, _, err = run(capsys, "importance", ckpt, "--limit", "40", "--n", "2", "--out", out,
                       "--export", export, "--quiet")
    assert code == 0 and err == "", err
    from pathens.data.datasets import load_dataset
    model, meta = checkpoints.load(ckpt)
    view = pathens.wrap(model)
    x, _ = load_dataset("digits", split="test", limit=40, normalize=meta["normalize"])
    want = block_influence(view, x)
    rows = list(csv.DictReader((out / "block_influence.csv").open()))
    got = [float(r["influence"]) if r["influence"] else float("nan") for r in rows]
    assert got == pytest.approx(list(want.influence), rel=1e-10, nan_ok=True)
    lowest = sorted(want.ranking()[:2])
    assert [r["remove"] == "True" for r in rows] == [i in lowest for i in range(len(rows))]
    again, meta = checkpoints.load(export / "model.pt")  # branches zeroed: the same network
    assert meta["extra"]["pruned"]["deleted_blocks"] == [want.names[i] for i in lowest]
    with torch.no_grad():
        torch.testing.assert_close(again(x), view.run(x, deleted=lowest), rtol=1e-5, atol=1e-5)


def test_importance_command_refuses_bad_input_writing_nothing(capsys, tmp_path):
    from cli_helpers import checkpoint, refused
    ckpt = checkpoint(tmp_path / "c.pt", depth=14)
    out = tmp_path / "out"
    base = ["importance", ckpt, "--limit", "8", "--out", out]
    refused(capsys, *base, "--n", "7", match="--n 7 is more than the 6 layers of the network")
    refused(capsys, *base, "--n", "5", match="--n 5: only 4 layers have a Block Influence")
    refused(capsys, *base, "--n", "0", match="--n must be a positive integer")
    refused(capsys, *base, "--positions", "all", match="--positions applies to --score angular")
    refused(capsys, *base, "--score", "angular", "--positions", "last",
            match="--positions last needs a stream of tokens (N, T, d)")
    refused(capsys, *base, "--score", "angular", "--n", "3",
            match="no 3 consecutive layers keep the stream's shape")
    refused(capsys, *base, "--export", out / "inside", match="must be separate folders")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    refused(capsys, *base, "--export", tmp_path / "full", match="already holds files")
    user = tmp_path / "tv.py"
    user.write_text("import torch, torchvision\n"
                    "def make():\n"
                    "    m = torchvision.models.resnet18(num_classes=10)\n"
                    "    m.conv1 = torch.nn.Conv2d(1, 64, 3, padding=1, bias=False)\n"
                    "    return m\n")
    refused(capsys, "importance", "--model", f"{user}:make", "--data", "digits", "--limit", "4",
            "--out", out, "--export", tmp_path / "e", match="ResNet is neither")
    assert not out.exists() and not (tmp_path / "e").exists()


# ---- top-5 error in lesion rows ----------------------------------------------------------------

def _classifier(classes: int):
    torch.manual_seed(0)
    model = pathens.cifar_resnet(8, width=4, num_classes=classes).double().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 32, 32, dtype=torch.float64, generator=g)
    return model, x, torch.randint(0, classes, (40,), generator=g)


def test_top5_error_beside_top1_equals_torch_topk():
    from pathens import lesion
    model, x, y = _classifier(10)
    view = pathens.wrap(model)
    each = lesion.delete_each(view, (x, y), batch_size=16, progress=False)  # 3 batches
    for r in each.rows:
        with torch.no_grad():
            logits = model(x) if r["kind"] == "intact" else view.run(x, deleted=r["deleted"])
        missed = int((logits.topk(5, dim=1).indices != y[:, None]).all(dim=1).sum())
        top1 = int((logits.argmax(1) != y).sum())
        assert (r["top5_errors"], r["top5_error"], r["errors"]) == (missed, missed / 40, top1)
    assert any(r["top5_errors"] != r["errors"] for r in each.rows)
    assert list(each.table()[0])[-2:] == ["top5_error", "top5_errors"]
    rand = lesion.delete_random(view, (x, y), ks=[1], trials=2, progress=False)
    s = rand.summary()[0]
    assert s["top5_error_mean"] == pytest.approx(np.mean([r["top5_error"] for r in rand.rows[1:]]))


def test_no_top5_for_language_models_and_fewer_than_5_classes():
    from pathens import lesion
    model, x, y = _classifier(4)
    row = lesion.evaluate(pathens.wrap(model), (x, y))
    assert "top5_error" not in row and "top5_errors" not in row
    lm = build_lm("llama")
    ids = tokens()
    row = lesion.evaluate(pathens.wrap(lm), (ids, ids), deleted=[1])
    assert "top5_error" not in row and row["n"] == 2 * 11


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_sweep_file_from_before_top5_resumes_without_it(tmp_path, suffix):
    """A file written before the top-5 columns existed (its rows, and for CSV its header,
    without them) is resumed: nothing is refused or recomputed, the missing conditions are
    appended in its own layout, and the rows all lack top-5 (in memory too)."""
    import csv
    import json
    from pathens import lesion
    from pathens.measure import lesion_engine
    from pathens.measure.lesion_rows import COLUMNS, TOP5
    model, x, y = _classifier(10)
    view = pathens.wrap(model)
    out = tmp_path / f"each{suffix}"
    full = lesion.delete_each(view, (x, y), out=out, progress=False)
    lines = out.read_text().splitlines()
    if suffix == ".csv":  # the old layout: 16 columns, the first 2 rows of 4 done
        old = [lines[0], ",".join(COLUMNS)] + [",".join(line.split(",")[:len(COLUMNS)])
                                                for line in lines[2:4]]
    else:
        old = [lines[0]] + [json.dumps({k: v for k, v in json.loads(line).items()
                                        if k not in TOP5}) for line in lines[1:3]]
    out.write_text("\n".join(old) + "\n")
    ran = []
    evaluate = lesion_engine.evaluate_group

    def counted(view, data, conds, **kw):
        ran.extend(conds)
        return evaluate(view, data, conds, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lesion_engine, "evaluate_group", counted)
        again = lesion.delete_each(view, (x, y), out=out, progress=False)
    assert len(ran) == len(full.rows) - 2
    assert all(not set(TOP5) & set(r) for r in again.rows)
    assert [{k: v for k, v in r.items() if k not in TOP5} for r in full.rows] == again.rows
    text = out.read_text().splitlines()
    if suffix == ".csv":
        assert text[1] == ",".join(COLUMNS)
        assert all(len(r) == len(COLUMNS) for r in csv.reader(text[2:]))
    assert len(text) == len(old) + len(ran)
    assert again.to_csv()  # one layout: the CSV writer takes every row
