"""pathens.text (the embedded corpus and tokenisation) and pathens.train_text (language-model
training), against what the files hold: streams rebuilt from the files by hand, round trips,
one-line errors, and a short training run that must lower the test loss."""
from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import pytest
import torch

import pathens
from pathens.errors import PathensError
from pathens.data.text import STDLIB_MODULES, checkpoint_corpus, load_corpus, text_dataset, tokenizer_from
from pathens.models.train_text import evaluate_lm, save_lm_checkpoint, train_lm
from pathens.models.transformer import gpt


def one_line(fn, match):
    with pytest.raises(PathensError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def stdlib():
    return load_corpus()


def test_stdlib_corpus_is_the_listed_files_split_per_file(stdlib):
    folder = Path(sysconfig.get_paths()["stdlib"])
    files = [m for m in STDLIB_MODULES if (folder / f"{m}.py").is_file()]
    d = stdlib.description
    assert d["files"] == [f"{m}.py" for m in files] and len(files) >= 60
    assert d["python"] and d["stdlib"] == str(folder) and d["vocab_size"] == 256
    # the streams, rebuilt by hand: each file's bytes, its last 10% to test
    raw = [(folder / f"{m}.py").read_bytes().replace(b"\r\n", b"\n") for m in files]
    train = b"".join(r[:len(r) - len(r) // 10] for r in raw)
    test = b"".join(r[len(r) - len(r) // 10:] for r in raw)
    assert bytes(stdlib.train.to(torch.uint8).tolist()) == train
    assert bytes(stdlib.test.to(torch.uint8).tolist()) == test
    h = hashlib.sha256()
    for m, r in zip(files, raw):
        h.update(f"{m}.py".encode() + b"\0" + r + b"\0")
    assert d["sha256"] == h.hexdigest()


def test_stdlib_windows_are_deterministic(stdlib):
    ids, targets = stdlib.windows("test", seq_len=32, limit=50)
    assert ids.shape == (50, 32) and ids.dtype == torch.int64 and torch.equal(ids, targets)
    again, _ = load_corpus().windows("test", seq_len=32, limit=50)
    assert torch.equal(ids, again)
    every, _ = stdlib.windows("test", seq_len=32)
    assert len(every) == len(stdlib.test) // 32
    assert torch.equal(every[0], stdlib.test[:32]) and torch.equal(ids[-1], every[-1])


def test_a_folder_splits_each_file_and_the_splits_are_disjoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    words = ["".join(chr(97 + int(c)) for c in torch.randint(0, 26, (7,), generator=g))
             for _ in range(400)]
    texts = {"b.txt": " ".join(words[:200]), "a/c.txt": " ".join(words[200:]) + " é"}
    for name, t in texts.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(t, encoding="utf-8")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "notes.md").write_text("not read")
    corpus = load_corpus(tmp_path, tokenizer="chars")
    assert corpus.description["files"] == ["a/c.txt", "b.txt"]  # sorted; empty and .md left out
    assert corpus.description["empty"] == ["empty.txt"]
    tok = corpus.tokenizer
    head = lambda t: t[:len(t) - len(t) // 10]
    assert tok.decode(corpus.train) == "".join(head(texts[n]) for n in ("a/c.txt", "b.txt"))
    assert tok.decode(corpus.test) == "".join(texts[n][len(head(texts[n])):] for n in ("a/c.txt", "b.txt"))
    train_text = tok.decode(corpus.train)
    ids, _ = corpus.windows("test", seq_len=24)
    assert all(tok.decode(w) not in train_text for w in ids)  # no test window was trained on
    rebuilt = tokenizer_from(corpus.description["tokenizer"])
    assert rebuilt.encode("é a") == tok.encode("é a")
    again = checkpoint_corpus(corpus.description)  # what a checkpoint's metadata rebuilds
    assert torch.equal(again.test, corpus.test) and again.tokenizer.chars == tok.chars
    corpus.check_vocab(corpus.vocab_size)
    one_line(lambda: corpus.check_vocab(corpus.vocab_size - 1), "tokenizer gives a vocabulary of")


def test_a_single_file_in_bytes_keeps_non_ascii_text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("naïve café\r\n" * 50, encoding="utf-8")
    corpus = load_corpus(path)
    assert corpus.tokenizer.decode(torch.cat([corpus.train, corpus.test])) == "naïve café\n" * 50
    ids, _ = text_dataset(path, split="train", seq_len=16)
    assert ids.shape[1] == 16 and int(ids.max()) > 127


def test_text_errors_are_one_line(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin1"))
    (tmp_path / "short.txt").write_text("abc")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "a.md").write_text("x")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    one_line(lambda: load_corpus(tmp_path / "empty.txt"), "is empty")
    one_line(lambda: load_corpus(tmp_path / "latin1.txt"), r"is not UTF-8 \(byte 0xe9 at offset 3\)")
    one_line(lambda: load_corpus(tmp_path / "none"), "holds no .txt files")
    one_line(lambda: load_corpus(tmp_path / "blank"), "only empty .txt files")
    one_line(lambda: load_corpus(tmp_path / "absent"), "does not exist")
    one_line(lambda: load_corpus(tmp_path / "short.txt", tokenizer="words"), "unknown tokenizer")
    one_line(lambda: load_corpus(tmp_path / "short.txt").windows("test", seq_len=8),
             "fewer than one window")
    one_line(lambda: load_corpus(tmp_path / "short.txt", tokenizer="hf:" + str(tmp_path / "x")),
             "tokenizer folder .* does not exist")


def test_a_hugging_face_tokenizer_from_a_local_folder(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    text = "def add(a, b):\n    return a + b\n" * 40
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel()
    bpe.decoder = tokenizers.decoders.ByteLevel()
    bpe.train_from_iterator([text], tokenizers.trainers.BpeTrainer(vocab_size=300,
                                                                   special_tokens=["[UNK]"]))
    folder = tmp_path / "tok"
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe).save_pretrained(folder)
    (tmp_path / "code.txt").write_text(text)
    corpus = load_corpus(tmp_path / "code.txt", tokenizer=f"hf:{folder}")
    expected = bpe.encode(text).ids
    assert torch.cat([corpus.train, corpus.test]).tolist() == expected
    assert corpus.vocab_size == bpe.get_vocab_size() and corpus.description["tokenizer"]["kind"] == "hf"
    assert corpus.tokenizer.decode(corpus.train[:9]) == bpe.decode(expected[:9])
    (tmp_path / "bad").mkdir()
    one_line(lambda: load_corpus(tmp_path / "code.txt", tokenizer=f"hf:{tmp_path / 'bad'}"),
             "no tokenizer could be loaded")


def test_windows_feed_path_gradients_and_lesions(stdlib):
    torch.manual_seed(0)
    view = pathens.wrap(gpt(depth=2, width=16, heads=2, context=16, norm="pre"))
    ids, targets = stdlib.windows("test", seq_len=16, limit=4)
    res = pathens.path_gradients(view, ids, targets, progress=False)
    assert res.num_blocks == 4 and res.residual < 1e-4
    each = pathens.lesion.delete_each(view, (ids, targets), progress=False)
    assert len(each.rows) == 5 and each.rows[0]["n"] == 4 * 15


def test_a_short_training_run_lowers_the_test_loss(tmp_path, stdlib):
    torch.manual_seed(0)
    model = gpt(depth=1, width=16, heads=2, context=16, norm="rezero")
    test = stdlib.windows("test", seq_len=16, limit=64)
    before = evaluate_lm(model, test)
    assert before["loss"] == pytest.approx(torch.log(torch.tensor(256.0)).item(), abs=0.05)
    result = train_lm(model, stdlib.train, steps=60, batch_size=16, lr=1e-2, warmup_steps=10,
                      eval_data=test, eval_every=30, progress=False)
    assert [h["step"] for h in result.history] == [30, 60] and len(result.curve) == 60
    assert result.loss < before["loss"] - 1.0
    assert result.perplexity == pytest.approx(torch.exp(torch.tensor(result.loss)).item(), rel=1e-6)
    assert abs(model.h[0].scale_attn.alpha.item()) > 0  # ReZero's alpha left 0
    path = save_lm_checkpoint(tmp_path / "lm.pt", model, result, data=stdlib.description,
                              command="pytest")
    rebuilt, meta = pathens.load(path)
    assert evaluate_lm(rebuilt, test)["loss"] == pytest.approx(result.loss, rel=1e-6)
    assert meta["data"]["sha256"] == stdlib.description["sha256"] and meta["steps"] == 60
    assert meta["extra"]["command"] == "pytest" and meta["loss"] == result.loss
    one_line(lambda: train_lm(model, stdlib.train, steps=0), "steps must be an integer >= 1")
