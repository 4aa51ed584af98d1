"""IMDB's tokenizers, both with the specials [PAD]=0 [UNK]=1 [CLS]=2: "byte" (LRA-style: id = utf-8 byte + 3,
vocabulary 259, no training) and "bpe" (a byte-pair-encoding subword tokenizer of the `tokenizers` library,
trained on the training split only). Both encode a batch of texts to int32 arrays of ids.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIALS = (PAD, UNK, CLS)
PAD_ID, UNK_ID, CLS_ID = 0, 1, 2
BYTE_OFFSET = len(SPECIALS)


class ByteTokenizer:
    """LRA-style byte-level ids: utf-8 byte + 3; [PAD]=0 [UNK]=1 [CLS]=2; vocab 259."""

    vocab_size = 256 + BYTE_OFFSET

    def __init__(self, lowercase: bool = False):
        self.lowercase = lowercase

    def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
        out = []
        for t in texts:
            if self.lowercase:
                t = t.lower()
            out.append(np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int32) + BYTE_OFFSET)
        return out


def train_bpe(texts: Sequence[str], vocab_size: int, lowercase: bool):
    """A BPE tokenizer trained on `texts` with [PAD]=0, [UNK]=1, [CLS]=2."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    norm = [normalizers.NFD(), normalizers.StripAccents()]
    if lowercase:
        norm.insert(1, normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    assert [tok.token_to_id(s) for s in SPECIALS] == [PAD_ID, UNK_ID, CLS_ID]
    return tok


def bpe_encode(tok, texts: Sequence[str], chunk: int = 2000) -> List[np.ndarray]:
    out = []
    for i in range(0, len(texts), chunk):
        out.extend(np.asarray(e.ids, dtype=np.int32) for e in tok.encode_batch(list(texts[i : i + chunk]), add_special_tokens=False))
    return out
