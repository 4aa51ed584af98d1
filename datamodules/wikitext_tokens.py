"""How WikiText text becomes ids.

Lines: the text is handled one line at a time, exactly as the files are read (universal newlines).
The hub holds one row per file line, with the trailing "\\n", and "" for the whitespace-only lines
(" \\n" in the files); so a whitespace-only line counts as an empty line everywhere, and local and
hub copies give the same token streams.

Tokenizers:
    "word"  the classic benchmark counting: each line is split on whitespace and followed by one
            end-of-line token `<eos>` (WikiText-2 train: 2,088,628 tokens, vocabulary 33,278).
            The vocabulary comes from the training split: `<eos>`, `<unk>` first, then the words by
            falling frequency, ties in code-point order. The files' own `<unk>` is that same token;
            a word of valid/test that is not in the vocabulary maps to `<unk>`.
    "bpe"   a byte-level BPE (`tokenizers` library) trained on the training split's lines, of
            `bpe_vocab_size` entries including `<eos>`; every line's pieces are followed by `<eos>`.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, List, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .common import DataUnavailableError

EOS, UNK = "<eos>", "<unk>"


def normalize_line(line: str) -> str:
    """One line's content as it is tokenized: without its line break; a blank line becomes ""."""
    line = line.rstrip("\r\n")
    return line if line.strip() else ""


def read_lines(path: Path) -> List[str]:
    try:
        with open(path, encoding="utf-8") as f:  # universal newlines, as the hub's builder read them
            return [normalize_line(line) for line in f]
    except UnicodeDecodeError as e:
        raise DataUnavailableError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}): it is corrupt or "
                                   f"not a WikiText file") from e


def split_text(text: str):
    """(complete lines, unterminated tail or None): the lines of `text` as a file would give them."""
    parts = re.split(r"\r\n|\r|\n", text)
    tail = parts.pop()
    return [normalize_line(p) for p in parts], (tail if tail else None)


class WordVocab:
    kind = "word"

    def __init__(self, itos: Sequence[str]):
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.eos_id, self.unk_id = self.stoi[EOS], self.stoi[UNK]

    @classmethod
    def build(cls, lines: Iterable[str]) -> "WordVocab":
        counts = Counter(w for line in lines for w in line.split())
        counts.pop(EOS, None)
        counts.pop(UNK, None)
        return cls([EOS, UNK] + sorted(counts, key=lambda w: (-counts[w], w)))

    def save(self, folder: Path):
        (folder / "vocab.json").write_text(json.dumps(self.itos, ensure_ascii=False))

    @classmethod
    def load(cls, folder: Path) -> "WordVocab":
        return cls(json.loads((folder / "vocab.json").read_text()))

    def __len__(self):
        return len(self.itos)

    def encode_piece(self, text: str) -> List[int]:
        get, unk = self.stoi.get, self.unk_id
        return [get(w, unk) for w in text.split()]

    def encode_lines(self, lines: Sequence[str]) -> List[int]:
        get, unk, eos = self.stoi.get, self.unk_id, self.eos_id
        out: List[int] = []
        for line in lines:
            out.extend(get(w, unk) for w in line.split())
            out.append(eos)
        return out

    def decode_piece(self, ids: Sequence[int]) -> str:
        return " ".join(self.itos[i] for i in ids)


class BPEVocab:
    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok
        self.eos_id = tok.token_to_id(EOS)
        self.unk_id = None

    @classmethod
    def build(cls, lines: Sequence[str], vocab_size: int) -> "BPEVocab":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
        return cls(tok)

    def save(self, folder: Path):
        self.tok.save(str(folder / "tokenizer.json"))

    @classmethod
    def load(cls, folder: Path) -> "BPEVocab":
        return cls(Tokenizer.from_file(str(folder / "tokenizer.json")))

    def __len__(self):
        return self.tok.get_vocab_size()

    def encode_piece(self, text: str) -> List[int]:
        return self.tok.encode(text, add_special_tokens=False).ids if text else []

    def encode_lines(self, lines: Sequence[str]) -> List[int]:
        out: List[int] = []
        for enc in self.tok.encode_batch(list(lines), add_special_tokens=False):
            out.extend(enc.ids)
            out.append(self.eos_id)
        return out

    def decode_piece(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False) if ids else ""
