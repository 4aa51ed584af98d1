"""LRA ListOps' tokens and text: the fixed vocabulary, an expression's text (with or without the release's
parentheses), and the release's `basic_{train,val,test}.tsv` files (a header `Source<TAB>Target`, then one
`expression<TAB>label` a line; lines end in \\r\\n, as Python's csv writer leaves them).

The release writes every operator application as nested pairs, `( ( ( [MAX 2 ) 9 ) ] )`; LRA's own input
pipeline (lra_benchmarks/listops/input_pipeline.py) deletes the parentheses before tokenizing, so a model
sees `[MAX 2 9 ]`, and its 2,000-token limit counts that form. The same is done here: parentheses are read
and dropped, never tokens. Vocabulary (16 ids, fixed, not learned):

    0 padding   1 [MIN   2 [MAX   3 [MED   4 [SM   5 ]   6 .. 15 the digits 0 .. 9
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Sequence

import numpy as np
import torch

from .common import DataUnavailableError

PAD_ID = 0
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")  # SM: the sum modulo 10
END = "]"
TOKENS = ("<pad>",) + OPERATORS + (END,) + tuple("0123456789")
OP_IDS = np.arange(1, 5, dtype=np.uint8)  # operator k (index into OPERATORS) has id k + 1
END_ID = 5
DIGIT_OFFSET = 6  # digit d has id d + 6
VOCAB_SIZE = len(TOKENS)  # 16, padding included
HEADER = b"Source\tTarget"
FILES = {split: f"basic_{split}.tsv" for split in ("train", "val", "test")}
ORIGIN = ("the LRA release (lra_release/listops-1000/ in lra_release.gz of google-research/long-range-arena), or "
          "use --data-source generated")

# Encoding is four bytes.replace and a few translates per line, all in C: an operator becomes a code byte, a
# digit or ']' is translated to its code, parentheses are deleted, and what is left must be code bytes standing
# alone between spaces. Anything else (an unknown operator, '12', a stray letter) leaves a byte or a run of
# bytes that is refused. Codes are id + 0x80: bytes the text cannot hold (it is checked to be ASCII) and that
# bytes.split() does not take for whitespace, as it would ids 9 .. 13.
_ALLOWED = b"()[]MINAXEDS0123456789 "
_CODE = 0x80
_TO_CODE = bytes.maketrans(b"0123456789]", bytes(range(_CODE + DIGIT_OFFSET, _CODE + DIGIT_OFFSET + 10))
                           + bytes([_CODE + END_ID]))
_CODES = bytes(range(_CODE + 1, _CODE + VOCAB_SIZE))
_FROM_CODE = bytes.maketrans(_CODES, bytes(range(1, VOCAB_SIZE)))
_OP_CODES = [(op.encode(), bytes([_CODE + int(i)])) for op, i in zip(OPERATORS, OP_IDS)]


def encode(expression: bytes) -> bytes:
    """An expression's token ids as bytes (one byte per token); ValueError saying what is wrong otherwise."""
    stray = expression.translate(None, _ALLOWED)
    if stray:
        raise ValueError(f"characters {bytes(sorted(set(stray))[:5])!r} that no ListOps token has")
    text = expression.translate(None, b"()")
    for op, code in _OP_CODES:
        text = text.replace(op, code)
    tokens = text.translate(_TO_CODE).split()
    codes = b"".join(tokens)
    if len(codes) != len(tokens) or codes.translate(None, _CODES):
        bad = next(t for t in tokens if len(t) != 1 or t.translate(None, _CODES))
        shown = "".join(TOKENS[b - _CODE] if _CODE < b < _CODE + VOCAB_SIZE else chr(b) for b in bad)
        raise ValueError(f"a token that is not one of {' '.join(TOKENS[1:])} (read as {shown!r})")
    if not codes:
        raise ValueError("an empty expression")
    return codes.translate(_FROM_CODE)


def render(ids: Iterable[int], parens: bool = False) -> str:
    """The expression's text: `[MAX 2 9 [MIN 4 7 ] 0 ]`, or with parens=True as the release writes it,
    `( ( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )`: each operator applied to its arguments one at
    a time, a pair `( f x )` for every argument and one for the closing bracket."""
    words = [TOKENS[int(i)] for i in ids]
    return _with_pairs(words) if parens else " ".join(words)


def _with_pairs(words: Sequence[str]) -> str:
    n = len(words)
    items = [0] * n  # for an operator: its argument count + 1 (the pairs it opens)
    stack = []
    for i, w in enumerate(words):
        if w in OPERATORS:
            stack.append(i)
        elif w == END:
            items[stack.pop()] += 1
            if stack:
                items[stack[-1]] += 1  # the finished application is an argument of the enclosing operator
        elif stack:
            items[stack[-1]] += 1
    out = []
    depth = 0
    for i, w in enumerate(words):
        if w in OPERATORS:
            out.extend(["("] * items[i])
            out.append(w)
            depth += 1
        elif w == END:
            out.extend([w, ")"])
            depth -= 1
            if depth:
                out.append(")")
        else:
            out.append(w)
            if depth:
                out.append(")")
    return " ".join(out)


def write_tsv(path: Path, token_lists: Iterable[Sequence[int]], labels: Iterable[int]) -> None:
    """A split in the release's layout and text (parentheses included), as its generator wrote it."""
    with open(path, "w", newline="") as f:
        f.write("Source\tTarget\r\n")
        for ids, label in zip(token_lists, labels):
            f.write(f"{render(ids, parens=True)}\t{int(label)}\r\n")


def read_tsv(path: Path) -> Dict[str, torch.Tensor]:
    """{"tokens": uint8 (total,), "offsets": int64 (N + 1,), "labels": int64 (N,)}: expression i is
    tokens[offsets[i]:offsets[i + 1]]. A missing header, a line that is not `expression<TAB>digit`, or a token
    outside the vocabulary is a DataUnavailableError naming the file and the line."""
    data, lengths, labels = bytearray(), [], []
    try:
        with open(path, "rb") as f:
            first = f.readline().rstrip(b"\r\n")
            if first != HEADER:
                raise DataUnavailableError(f"{path} begins with {first[:40]!r}; an LRA ListOps file begins with "
                                           f"the header 'Source<TAB>Target'")
            for n, line in enumerate(f, start=2):
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                source, tab, target = line.rpartition(b"\t")
                if not tab or len(target) != 1 or not target.isdigit():
                    raise DataUnavailableError(f"{path} line {n} does not end in a tab and a label 0-9 "
                                               f"(ends in {line[-20:]!r})")
                try:
                    ids = encode(source)
                except ValueError as e:
                    raise DataUnavailableError(f"{path} line {n} has {e}") from None
                data += ids
                lengths.append(len(ids))
                labels.append(int(target))
    except OSError as e:
        raise DataUnavailableError(f"{path} cannot be read ({type(e).__name__}: {e.strerror or e})") from e
    if not labels:
        raise DataUnavailableError(f"{path} holds no expressions: expected lines of expression<TAB>label")
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    return {"tokens": torch.frombuffer(data, dtype=torch.uint8), "offsets": torch.from_numpy(offsets),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def split_ok(packed) -> bool:
    """Whether a cached split holds what read_tsv (or the generator) returns."""
    try:
        tokens, offsets, labels = packed["tokens"], packed["offsets"], packed["labels"]
        return (tokens.dtype == torch.uint8 and offsets.dtype == torch.int64 and labels.dtype == torch.int64
                and len(labels) > 0 and len(offsets) == len(labels) + 1 and int(offsets[0]) == 0
                and int(offsets[-1]) == len(tokens) and bool((offsets[1:] > offsets[:-1]).all())
                and bool(((labels >= 0) & (labels <= 9)).all())
                and (len(tokens) == 0 or (int(tokens.min()) >= 1 and int(tokens.max()) < VOCAB_SIZE)))
    except (KeyError, TypeError, AttributeError, RuntimeError):
        return False
