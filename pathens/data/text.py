"""Text for language models, with nothing downloaded: by default the Python standard library's
own source, which ships with every Python installation; or a user's UTF-8 text file or folder.

    corpus = load_corpus()                                 # the stdlib, bytes (vocabulary 256)
    ids, targets = corpus.windows("test", seq_len=64)      # (N, 64) int64 twice: targets = ids
    corpus = load_corpus("book.txt", tokenizer="chars")    # a user's file, characters
    corpus = load_corpus("texts/", tokenizer="hf:gpt2-folder")   # a Hugging Face tokenizer

The stdlib corpus is the fixed list STDLIB_MODULES (pure-Python modules, in that order) read
from sysconfig.get_paths()["stdlib"]. Its text differs slightly between Python versions, so
the corpus's `description` records the Python version, the files read and the sha256 of the
text; a module missing from an installation is skipped and listed there.

Split: each file's first 90% of tokens go to train, its last 10% to test (test_fraction). Every
module is then represented in both splits, no window straddles the cut, and a single user file
splits the same way; a contiguous cut of the concatenation would instead test on the last few
modules of the list only. Line endings are normalised to "\\n".

Examples are windows of T consecutive tokens, inputs and targets the same ids: pathens's
loss="next_token" shifts them (position t predicts token t+1), so the pairs go straight into
pathens.path_gradients(view, ids, ids) and pathens.lesion.delete_each(view, (ids, ids)).
"""
from __future__ import annotations

import hashlib
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import checks
from ..errors import PathensError
from .remote_code import refuse_folder_code

# Pure-Python modules present (as single files) from Python 3.9 on, alphabetical: ~2.2 MB.
STDLIB_MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "cmd", "code", "codeop",
    "colorsys", "configparser", "contextlib", "copy", "csv", "dataclasses", "difflib", "enum",
    "filecmp", "fileinput", "fnmatch", "fractions", "functools", "getopt", "gettext", "glob",
    "graphlib", "gzip", "heapq", "hmac", "inspect", "ipaddress", "linecache", "locale",
    "mimetypes", "netrc", "numbers", "operator", "optparse", "pickle", "platform", "plistlib",
    "pprint", "queue", "quopri", "random", "reprlib", "sched", "secrets", "selectors", "shlex",
    "shutil", "socketserver", "statistics", "string", "subprocess", "tabnanny", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "types",
    "typing", "uuid", "warnings", "wave", "weakref", "zipapp",
)
TEST_FRACTION = 0.1
SPLITS = ("train", "test")
_NAMES_KEPT = 100  # file names a description lists (then a count)


# ---- tokenizers ------------------------------------------------------------------------------

class Tokenizer:
    """text <-> token ids. kind: "bytes" (UTF-8 bytes, vocabulary 256), "chars" (the corpus's
    characters, sorted) or "hf" (a Hugging Face tokenizer from a local folder)."""

    kind = ""
    vocab_size = 0

    def encode(self, text: str):
        """Token ids: a list of ints or a 1-d integer tensor."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        return dict(kind=self.kind, vocab_size=self.vocab_size)


class ByteTokenizer(Tokenizer):
    kind, vocab_size = "bytes", 256

    def encode(self, text):
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()

    def decode(self, ids):
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class CharTokenizer(Tokenizer):
    """One id per character of `chars` (sorted, distinct); the description keeps them, so the
    tokenizer can be rebuilt from a checkpoint's metadata."""

    kind = "chars"

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    def encode(self, text):
        try:
            return [self.index[c] for c in text]
        except KeyError as err:
            raise PathensError(f"the text holds the character {err.args[0]!r}, which is not in "
                               f"this tokenizer's {self.vocab_size} characters") from None

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)

    def describe(self):
        return dict(super().describe(), chars=self.chars)


class HFTokenizer(Tokenizer):
    kind = "hf"

    def __init__(self, folder):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise PathensError(f"tokenizer folder {self.folder} does not exist (or is not a "
                               f"folder): pass a Hugging Face model folder holding a tokenizer")
        refuse_folder_code(self.folder)  # before transformers could ask to run it
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise PathensError("a Hugging Face tokenizer needs transformers: pip install "
                               "transformers") from None
        try:
            self.tok = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True,
                                                     trust_remote_code=False)  # never prompt
        except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, ...
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PathensError(f"no tokenizer could be loaded from {self.folder} ({first[:120]}): "
                               f"pass a Hugging Face model folder with tokenizer files") from None
        self.vocab_size = len(self.tok)

    def encode(self, text):
        return self.tok(text, add_special_tokens=False, verbose=False)["input_ids"]

    def decode(self, ids):
        return self.tok.decode([int(i) for i in ids])

    def describe(self):
        return dict(super().describe(), folder=str(self.folder),
                    name=getattr(self.tok, "name_or_path", ""), cls=type(self.tok).__name__)


def tokenizer_from(spec, text: str = "") -> Tokenizer:
    """A Tokenizer from "bytes", "chars" (built on `text`), "hf:FOLDER" or a description dict
    (Tokenizer.describe(), e.g. from a checkpoint's metadata)."""
    if isinstance(spec, dict):
        kind = spec.get("kind")
        if kind == "chars" and isinstance(spec.get("chars"), str):
            return CharTokenizer(spec["chars"])
        if kind == "hf" and spec.get("folder"):
            return HFTokenizer(spec["folder"])
        spec = kind
    if spec == "bytes":
        return ByteTokenizer()
    if spec == "chars":
        return CharTokenizer(text)
    if isinstance(spec, str) and spec.startswith("hf:"):
        return HFTokenizer(spec[3:])
    raise PathensError(f"unknown tokenizer {spec!r}: use 'bytes', 'chars' or 'hf:FOLDER' (a Hugging "
                       f"Face model folder)")


# ---- reading text ----------------------------------------------------------------------------

def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PathensError(f"text file {path} is not UTF-8 (byte 0x{raw[err.start]:02x} at offset "
                           f"{err.start}): convert it, e.g. iconv -f latin1 -t utf-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def stdlib_sources() -> tuple[list, dict]:
    """[(name, text)] of STDLIB_MODULES found in this Python's stdlib folder, and what was read."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    found, missing = [], []
    for module in STDLIB_MODULES:
        path = folder / f"{module}.py"
        if path.is_file():
            found.append((f"{module}.py", _decode(path, path.read_bytes())))
        else:
            missing.append(module)
    if not found:
        raise PathensError(f"none of the standard library's source files are in {folder} (this "
                           f"Python ships without them): pass a text file or folder (--root)")
    return found, dict(source="python-stdlib", python=platform.python_version(),
                       stdlib=str(folder), missing=missing)


def file_sources(root) -> tuple[list, dict]:
    """[(name, text)] of a UTF-8 file, or of the .txt files under a folder (sorted by relative
    path; empty files skipped and listed), and what was read."""
    root = Path(root).expanduser()
    if not root.exists():
        raise PathensError(f"text root {root} does not exist: pass a UTF-8 text file or a folder "
                           f"of .txt files")
    if root.is_file():
        text = _decode(root, root.read_bytes())
        if not text:
            raise PathensError(f"text file {root} is empty: there is nothing to train or test on")
        return [(root.name, text)], dict(source="file", root=str(root))
    files = sorted(p for p in root.rglob("*.txt") if p.is_file())
    if not files:
        raise PathensError(f"folder {root} holds no .txt files: pass a text file or a folder of "
                           f"UTF-8 .txt files")
    found, empty = [], []
    for p in files:
        name = p.relative_to(root).as_posix()
        text = _decode(p, p.read_bytes())
        (found.append((name, text)) if text else empty.append(name))
    if not found:
        raise PathensError(f"folder {root} holds only empty .txt files ({len(empty)}): there is "
                           f"no text")
    return found, dict(source="folder", root=str(root), empty=empty[:_NAMES_KEPT])


def _sha256(sources: list) -> str:
    """sha256 over each file's name and (normalised) text, in order, NUL-separated."""
    h = hashlib.sha256()
    for name, text in sources:
        h.update(name.encode() + b"\0" + text.encode("utf-8") + b"\0")
    return h.hexdigest()


# ---- the corpus ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Corpus:
    """A tokenised text, split. train / test: 1-d int64 token streams (each file's first and
    last part, concatenated in file order); description: plain values saying what it is
    (source, files, Python version, sha256, tokenizer, split), fit for checkpoint metadata."""

    train: torch.Tensor
    test: torch.Tensor
    tokenizer: Tokenizer
    description: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def stream(self, split: str) -> torch.Tensor:
        if split not in SPLITS:
            raise PathensError(f"unknown split {split!r}: choose 'train' or 'test'")
        return self.train if split == "train" else self.test

    def windows(self, split: str = "test", *, seq_len: int, limit: int | None = None) -> tuple:
        """(ids, ids): the split cut into consecutive, non-overlapping windows of seq_len
        tokens, (N, seq_len) int64; limit keeps that many, evenly spaced through the split."""
        seq_len = checks.seq_len(seq_len)
        limit = None if limit is None else checks.limit(limit)
        s = self.stream(split)
        n = len(s) // seq_len
        if n == 0:
            raise PathensError(f"the {split} split holds {len(s)} tokens, fewer than one window of "
                               f"{seq_len}: use a longer text or a shorter sequence length")
        ids = s[:n * seq_len].view(n, seq_len)
        if limit is not None and limit < n:
            ids = ids[torch.linspace(0, n - 1, limit).long()]
        ids = ids.clone()
        return ids, ids

    def check_vocab(self, vocab_size: int, what: str = "the model") -> None:
        """A one-line PathensError when this corpus's ids do not fit a vocabulary of vocab_size
        (a tokenizer that is not the model's own)."""
        top = max([int(s.max()) for s in (self.train, self.test) if len(s)] or [0])
        if self.vocab_size > vocab_size or top >= vocab_size:
            raise PathensError(f"the {self.tokenizer.kind} tokenizer gives a vocabulary of "
                               f"{self.vocab_size} (ids up to {top}) but {what} has {vocab_size}: "
                               f"tokenise with the model's own tokenizer")

    def __repr__(self) -> str:
        d = self.description
        return (f"Corpus({d.get('source')}, {len(d.get('files', []))} files, {self.tokenizer.kind} "
                f"(vocabulary {self.vocab_size}), train {len(self.train)} / test {len(self.test)} "
                f"tokens)")


def load_corpus(root=None, *, tokenizer="bytes", test_fraction: float = TEST_FRACTION) -> Corpus:
    """The corpus of `root` (None: the Python standard library's source; a UTF-8 file; or a
    folder of .txt files), tokenised with `tokenizer` ("bytes", "chars", "hf:FOLDER", or a
    Tokenizer), each file split test_fraction from its end for the test split."""
    checks.number("test_fraction", test_fraction, low=0, high=1, open_low=True, open_high=True)
    sources, desc = stdlib_sources() if root is None else file_sources(root)
    text = "".join(t for _, t in sources)
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else tokenizer_from(tokenizer, text)
    train, test = [], []
    for _, t in sources:
        ids = torch.as_tensor(tok.encode(t), dtype=torch.int64)
        cut = len(ids) - int(len(ids) * test_fraction)
        train.append(ids[:cut])
        test.append(ids[cut:])
    train, test = torch.cat(train), torch.cat(test)
    names = [n for n, _ in sources]
    desc = dict(name="text", **desc, files=names[:_NAMES_KEPT], num_files=len(names),
                characters=len(text), sha256=_sha256(sources), newlines="normalised to \\n",
                tokenizer=tok.describe(), vocab_size=tok.vocab_size,
                split=f"per file: first {1 - test_fraction:.0%} of its tokens train, last "
                      f"{test_fraction:.0%} test", test_fraction=test_fraction,
                train_tokens=len(train), test_tokens=len(test))
    return Corpus(train, test, tok, desc)


def checkpoint_corpus(data: dict | None, *, root=None, tokenizer=None) -> Corpus:
    """The corpus a model was trained on, from its checkpoint's data description (meta["data"]):
    the same source (the stdlib, or the file or folder it names) and tokenizer (for "chars",
    the checkpoint's own characters), unless root or tokenizer say otherwise. The sha256 of
    the text read may differ from the checkpoint's (another Python version's stdlib): compare
    corpus.description["sha256"] with data["sha256"] to know."""
    data = data or {}
    if root is None and data.get("source") in ("file", "folder"):
        root = data.get("root")
    if tokenizer is None:
        tokenizer = data.get("tokenizer") or "bytes"
    return load_corpus(root, tokenizer=tokenizer,
                       test_fraction=data.get("test_fraction", TEST_FRACTION))


def text_dataset(root=None, *, split: str = "test", seq_len: int = 64, tokenizer="bytes",
                 limit: int | None = None) -> tuple:
    """(ids, ids) windows of one split of load_corpus(root, tokenizer=tokenizer): the
    language-model counterpart of pathens.data.load_dataset (for --data text)."""
    return load_corpus(root, tokenizer=tokenizer).windows(split, seq_len=seq_len, limit=limit)
