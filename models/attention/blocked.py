"""Blocked sparse attention, the kernel shared by `local`, `hybrid`, `longformer`, `bigbird` and `sparse`:
a band of key blocks per query block, plus keys every query sees (global tokens, summary positions),
gathered key blocks per query block (random blocks), strided keys (j = i mod the block), and dense rows
for global queries, all masked once and normalised by one softmax per query. Never an n x n matrix.

A mechanism describes its pattern as a `BlockPattern`: the geometry the kernel computes (block length W,
band reach, the extra key sets) and `rule(i, j)`, the paper's definition of which key j query i may see
(original positions, broadcasting). The kernel computes every pair the geometry covers, keeps those the
rule allows (each pair once: a part drops pairs an earlier part covers) and masks the rest; the dense
(B, h, n, n) matrix on request is the same rule written densely. Tests compare the two with an allowed
matrix written independently from each paper.

Layout per (batch element, head): positions are regrouped by residue mod `dilation` (G = dilation groups,
each an ordinary sequence of L = ceil(n / G) positions), cut into nb blocks of W. The band of query block
b is key blocks b - before .. b + after, read as an overlapping `unfold` view of the keys padded by
before (after) zero blocks: one batched matmul per head with no copy of the windows. Masks (the rule,
causality, padding, sequence ends) are merged once into an additive bias that `baddbmm` adds while it
computes the scores.

Axis letters: B batch, h heads, n length, e head dim, G residue groups, nb blocks, W block length,
K keys computed per query (span W * (before + 1 + after) + shared + gathered + strided).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .functional import masked_softmax

Rule = Callable[[Tensor, Tensor], Tensor]


def masked_value(dtype: torch.dtype) -> float:
    """What a disallowed score becomes: finite (half the dtype's minimum, so adding a score cannot overflow),
    so a row with no allowed key gives a finite (meaningless) output, and exp() of it is exactly 0 beside any
    allowed key."""
    return torch.finfo(dtype).min / 2


@dataclass(frozen=True, eq=False)
class BlockPattern:
    """Which key blocks the kernel computes for a sequence of n positions, and the rule that masks them.

    block     W, positions per block (within a residue group)
    before    key blocks before the query's own block in its band (0 or more); after: after it
    rule      allowed(i, j) on original positions, broadcasting (causality is added by the kernel)
    dilation  G: the band runs within each residue class mod G (a dilated window)
    shared    (S,) original positions of keys every query may see (global tokens, summary positions)
    gathered  (nb, r) key blocks per query block (random blocks), -1 = an empty slot (dilation 1 only)
    strided   keys j = i (mod W) for every query (sparse's strided pattern; dilation 1 only)
    global_rows  (R,) original positions of queries that attend to every key the rule allows (dense rows)
    """

    n: int
    block: int
    before: int
    after: int
    rule: Rule
    dilation: int = 1
    shared: Optional[Tensor] = None
    gathered: Optional[Tensor] = None
    strided: bool = False
    global_rows: Optional[Tensor] = None
    _bias: Dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if (self.gathered is not None or self.strided) and self.dilation != 1:
            raise ValueError(f"gathered or strided keys need dilation 1, got dilation {self.dilation}")

    # ------------------------------------------------------------------ geometry

    @property
    def length(self) -> int:  # L, positions per residue group
        return -(-self.n // self.dilation)

    @property
    def blocks(self) -> int:  # nb
        return -(-self.length // self.block)

    @property
    def span(self) -> int:  # keys in a band
        return (self.before + 1 + self.after) * self.block

    def part_sizes(self) -> List[Tuple[str, int]]:
        """(part, keys per query) in the order the kernel concatenates them."""
        parts = [("band", self.span)]
        if self.shared is not None:
            parts.append(("shared", len(self.shared)))
        if self.gathered is not None:
            parts.append(("gathered", self.gathered.shape[1] * self.block))
        if self.strided:
            parts.append(("strided", self.blocks))
        return parts

    def flops(self, batch: int, heads: int, e: int) -> int:
        """Matmul FLOPs of `blocked_attention` (2 per multiply-add): scores and their product with the values
        for every computed pair, padded blocks included, plus the dense global rows."""
        rows = self.dilation * self.blocks * self.block  # query rows computed per head
        keys = sum(size for _, size in self.part_sizes())
        fl = 2 * 2 * rows * keys * e
        if self.global_rows is not None:
            fl += 2 * 2 * len(self.global_rows) * self.n * e
        return batch * heads * fl

    # ------------------------------------------------------------------ masks

    def dense_allowed(self, causal: bool, device) -> Tensor:
        """(n, n) bool: the rule written densely (O(n^2)), for the weights returned on request."""
        i = torch.arange(self.n, device=device)[:, None]
        j = torch.arange(self.n, device=device)[None, :]
        allowed = self.rule(i, j)
        return allowed & (j <= i) if causal else allowed

    def _covers_band(self, i: Tensor, j: Tensor) -> Tensor:
        d, W = self.dilation, self.block
        rel = torch.div(j // d, W, rounding_mode="floor") - torch.div(i // d, W, rounding_mode="floor")
        return (i % d == j % d) & (rel >= -self.before) & (rel <= self.after)

    def key_grid(self, device) -> Tuple[Tensor, Tensor, Tensor]:
        """Original positions of the computed queries (G, nb, W, 1) and keys (G, nb, W, K), and whether each
        key exists (inside the sequence, not an empty slot); (W of keys is 1 where a part is the same for every
        row of a block)."""
        d, W, nb, n = self.dilation, self.block, self.blocks, self.n
        ar = lambda m: torch.arange(m, device=device)  # noqa: E731
        g, blk, r = ar(d).view(d, 1, 1, 1), ar(nb).view(1, nb, 1, 1), ar(W).view(1, 1, W, 1)
        qpos = (blk * W + r) * d + g  # (G, nb, W, 1)
        keys, exists = [], []
        for part, size in self.part_sizes():
            if part == "band":
                kl = (blk - self.before) * W + ar(size).view(1, 1, 1, size)  # (1, nb, 1, span) within the group
                kp = kl * d + g  # (G, nb, 1, span)
                ok = (kl >= 0) & (kl < nb * W) & (kp < n)
            elif part == "shared":
                kp = self.shared.to(device).view(1, 1, 1, size)
                ok = torch.ones_like(kp, dtype=torch.bool)
            elif part == "gathered":
                R = self.gathered.to(device)  # (nb, r)
                kp = (R[:, :, None] * W + ar(W)).reshape(1, nb, 1, size)
                ok = (R[:, :, None] >= 0).expand(-1, -1, W).reshape(1, nb, 1, size) & (kp < n)
            else:  # strided: row r of a block sees positions t * W + r, t over all blocks
                kp = ar(nb).view(1, 1, 1, nb) * W + r  # (1, 1, W, nb)
                ok = kp < n
            keys.append(kp.expand(d, nb, W, size))
            exists.append(ok.expand(d, nb, W, size))
        return qpos, torch.cat(keys, -1), torch.cat(exists, -1)

    def structure(self, causal: bool, device) -> Tuple[Tensor, Tensor]:
        """Key positions (G, nb, W, K) and the structural mask (G, nb, W, K): the rule, causality, sequence
        ends, and each pair once (a part drops what an earlier one covers)."""
        i, j, ok = self.key_grid(device)
        ic, jc = i.clamp(max=self.n - 1), j.clamp(0, self.n - 1)
        allowed = ok & self.rule(ic, jc)
        if causal:
            allowed &= jc <= ic
        # dedup: the band comes first; shared keys are not read again by gathered / strided parts
        first = self.span
        band_cover = self._covers_band(ic, jc[..., first:])
        drop = band_cover
        if self.shared is not None:
            in_shared = torch.zeros(self.n, dtype=torch.bool, device=device)
            in_shared[self.shared.to(device)] = True
            S = len(self.shared)
            drop = torch.cat([band_cover[..., :S], band_cover[..., S:] | in_shared[jc[..., first + S:]]], -1)
        allowed[..., first:] &= ~drop
        return j, allowed

    def bias(self, causal: bool, mask: Optional[Tensor], dtype: torch.dtype, device) -> Tensor:
        """Additive bias (B | 1, G, nb, W, K): 0 where allowed, masked_value elsewhere; padding keys (mask
        False) are merged in here, once for all heads. Without a mask it is cached per (causal, dtype, device)."""
        key = (causal, dtype, str(device))
        if mask is None and key in self._bias:
            return self._bias[key]
        j, allowed = self.structure(causal, device)
        if mask is None:
            allowed = allowed[None]
        else:
            allowed = allowed[None] & mask[:, j.clamp(0, self.n - 1)]  # (B, G, nb, W, K)
        out = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, masked_value(dtype))
        if mask is None:
            self._bias[key] = out
        return out

    def row_bias(self, causal: bool, mask: Optional[Tensor], dtype: torch.dtype, device) -> Tensor:
        """(B | 1, R, n) bias of the dense global rows."""
        rows = self.global_rows.to(device)[:, None]
        j = torch.arange(self.n, device=device)[None, :]
        allowed = self.rule(rows, j)
        if causal:
            allowed = allowed & (j <= rows)
        allowed = allowed[None] if mask is None else allowed[None] & mask[:, None, :]
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, masked_value(dtype))


# --------------------------------------------------------------------------- the kernel


def _to_layout(t: Tensor, p: BlockPattern, front: int, back: int) -> Tensor:
    """(B, h, n, e) -> (B, h, G, (front + nb + back) * W, e), contiguous: zero blocks before and after, each
    residue group's positions in order. One copy (two with dilation)."""
    B, h, n, e = t.shape
    d, W = p.dilation, p.block
    total = (front + p.blocks + back) * W * d
    t = F.pad(t, (0, 0, front * W * d, total - front * W * d - n))  # (B, h, total, e)
    if d == 1:
        return t.view(B, h, 1, total, e)
    return t.view(B, h, total // d, d, e).transpose(2, 3).contiguous()


def _from_layout(y: Tensor, p: BlockPattern) -> Tensor:
    """(B, h, G, nb * W, e) -> (B, h, n, e)"""
    B, h, d, Lp, e = y.shape
    if d > 1:
        y = y.transpose(2, 3)
    return y.reshape(B, h, Lp * d, e)[:, :, : p.n]


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, p: BlockPattern, mask: Optional[Tensor], causal: bool,
                      scale: float) -> Tensor:
    """q, k, v: (B, h, n, e); mask: (B, n) bool padding mask (True = real) or None. Returns (B, h, n, e).
    Softmax over the allowed keys of each query, computed block by block (see the module docstring)."""
    B, h, n, e = q.shape
    if n != p.n:
        raise ValueError(f"the pattern was built for {p.n} positions, got a sequence of {n}")
    W, nb, G, span = p.block, p.blocks, p.dilation, p.span
    Lp = nb * W
    bias = p.bias(causal, mask, q.dtype, q.device)  # (B | 1, G, nb, W, K)
    ql = _to_layout(q, p, 0, 0)  # (B, h, G, Lp, e)
    kl = _to_layout(k, p, p.before, p.after)  # (B, h, G, (before + nb + after) W, e)
    vl = _to_layout(v, p, p.before, p.after)
    if p.shared is not None:
        S = p.shared.to(q.device)
        ks, vs = k[:, :, S], v[:, :, S]  # (B, h, S, e)
    if p.gathered is not None:
        R = p.gathered.to(q.device).clamp(min=0)  # empty slots read block 0 and are masked
        r = R.shape[1]

        def gather(t: Tensor) -> Tensor:  # (B, h, 1, ..., e) -> (B, h, nb, r W, e)
            own = t[:, :, 0, p.before * W : p.before * W + Lp].view(B, h, nb, W, e)
            return own[:, :, R].reshape(B, h, nb, r * W, e)

        kg, vg = gather(kl), gather(vl)
    ys = []
    for b in range(B):
        bb = bias[b if bias.shape[0] > 1 else 0]
        for hh in range(h):
            for g in range(G):
                bg = bb[g]  # (nb, W, K)
                qb = ql[b, hh, g].view(nb, W, e)
                kw = kl[b, hh, g].unfold(0, span, W)  # (nb, e, span): overlapping windows, a view
                vw = vl[b, hh, g].unfold(0, span, W).transpose(1, 2)  # (nb, span, e)
                parts = [torch.baddbmm(bg[..., :span], qb, kw, alpha=scale)]  # (nb, W, span)
                off = span
                if p.shared is not None:
                    size = ks.shape[2]
                    s = torch.addmm(bg[..., off : off + size].reshape(Lp, size), ql[b, hh, g], ks[b, hh].T, alpha=scale)
                    parts.append(s.view(nb, W, size))
                    off += size
                if p.gathered is not None:
                    size = r * W
                    parts.append(torch.baddbmm(bg[..., off : off + size], qb, kg[b, hh].transpose(-2, -1), alpha=scale))
                    off += size
                if p.strided:  # row r of every block against keys t W + r: (W, nb, nb) in residue order
                    qr = qb.transpose(0, 1)  # (W, nb, e)
                    kr = kl[b, hh, 0, p.before * W : p.before * W + Lp].view(nb, W, e).transpose(0, 1)
                    s = torch.baddbmm(bg[..., off : off + nb].transpose(0, 1), qr, kr.transpose(1, 2), alpha=scale)
                    parts.append(s.transpose(0, 1))  # (nb, W, nb)
                scores = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
                a = scores.softmax(-1)  # (nb, W, K)
                y = torch.bmm(a[..., :span], vw)  # (nb, W, e)
                off = span
                if p.shared is not None:
                    size = vs.shape[2]
                    y = torch.addmm(y.view(Lp, e), a[..., off : off + size].reshape(Lp, size), vs[b, hh]).view(nb, W, e)
                    off += size
                if p.gathered is not None:
                    y = torch.baddbmm(y, a[..., off : off + r * W], vg[b, hh])
                    off += r * W
                if p.strided:
                    vr = vl[b, hh, 0, p.before * W : p.before * W + Lp].view(nb, W, e).transpose(0, 1)  # (W, nb, e)
                    y = y + torch.bmm(a[..., off : off + nb].transpose(0, 1), vr).transpose(0, 1)
                ys.append(y.view(Lp, e))
    y = _from_layout(torch.stack(ys).view(B, h, G, Lp, e), p)  # (B, h, n, e)
    if p.global_rows is not None and len(p.global_rows):
        rows = p.global_rows.to(q.device)
        rb = p.row_bias(causal, mask, q.dtype, q.device)  # (B | 1, R, n)
        s = torch.baddbmm(rb[:, None].expand(B, h, -1, -1).reshape(B * h, len(rows), n),
                          q[:, :, rows].reshape(B * h, len(rows), e), k.reshape(B * h, n, e).transpose(1, 2), alpha=scale)
        yr = torch.bmm(s.softmax(-1), v.reshape(B * h, n, e)).view(B, h, len(rows), e)
        y = y.index_copy(2, rows, yr)
    return y


def dense_weights(q: Tensor, k: Tensor, p: BlockPattern, mask: Optional[Tensor], causal: bool, scale: float) -> Tensor:
    """The (B, h, n, n) matrix `blocked_attention` applies, written densely (O(n^2), for inspection)."""
    allowed = p.dense_allowed(causal, q.device)
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    return masked_softmax((q @ k.transpose(-2, -1)) * scale, allowed)


# --------------------------------------------------------------------------- padding by rank


def by_rank(fn: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor],
            square: bool = False) -> Tensor:
    """Run `fn(q, k, v)` on each batch element's real tokens alone (positions become ranks among the real
    tokens), so a pattern defined on absolute positions (global prefix, block grid, random blocks) ignores
    padding wherever it sits. Padding rows come back as zeros. `square`: fn returns (1, h, m, m) weights,
    scattered into (B, h, n, n)."""
    if mask is None or bool(mask.all()):
        return fn(q, k, v)
    B, h, n, e = q.shape
    out = []
    for b in range(B):
        idx = mask[b].nonzero().squeeze(1)
        shape = (h, n, n) if square else (h, n, e)
        full = q.new_zeros(shape)
        if len(idx):
            yb = fn(q[b : b + 1, :, idx], k[b : b + 1, :, idx], v[b : b + 1, :, idx])[0]
            if square:
                full = full.index_copy(1, idx, q.new_zeros(h, len(idx), n).index_copy(2, idx, yb))
            else:
                full = full.index_copy(1, idx, yb)
        out.append(full)
    return torch.stack(out)


# --------------------------------------------------------------------------- sliding windows (local, hybrid)


def window_rule(window: int, dilation: int) -> Rule:
    """|i - j| <= window * dilation and j - i a multiple of dilation."""

    def rule(i: Tensor, j: Tensor) -> Tensor:
        rel = j - i
        return (rel % dilation == 0) & (rel.abs() <= window * dilation)

    return rule


def band_reach(blocks: int, causal: bool) -> Tuple[int, int]:
    """Key blocks before and after a query's own block for a window of one block's radius: the neighbours
    (none after under causality), or only its own block when the sequence is one block."""
    if blocks == 1:
        return 0, 0
    return 1, 0 if causal else 1


@lru_cache(maxsize=16)
def window_pattern(n: int, window: int, dilation: int, causal: bool) -> BlockPattern:
    """The sliding window of radius `window` (in steps of `dilation`): blocks of W = window positions per
    residue group, so the neighbouring blocks hold every key in reach (3W keys computed for 2w + 1 needed;
    causal 2W for w + 1)."""
    L = -(-n // dilation)
    W = max(1, min(window, L))
    before, after = band_reach(-(-L // W), causal)
    return BlockPattern(n, W, before, after, window_rule(window, dilation), dilation=dilation)


def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, window: int, mask: Optional[Tensor] = None,
                             causal: bool = False, dilation: int = 1, scale: Optional[float] = None) -> Tensor:
    """q, k, v: (B, h, n, e); mask: (B, n) bool padding mask. Returns (B, h, n, e)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return blocked_attention(q, k, v, window_pattern(q.shape[2], window, dilation, causal), mask, causal, scale)


def dense_window_weights(q: Tensor, k: Tensor, window: int, mask: Optional[Tensor], causal: bool, dilation: int,
                         scale: float) -> Tensor:
    """The (B, h, n, n) matrix `sliding_window_attention` applies, written densely (O(n^2))."""
    return dense_weights(q, k, window_pattern(q.shape[2], window, dilation, causal), mask, causal, scale)


def window_flops(batch: int, heads: int, n: int, e: int, window: int, causal: bool, dilation: int = 1) -> int:
    """Matmul FLOPs of `sliding_window_attention` (the computed band, up to 1.5x the 2w + 1 keys needed)."""
    return window_pattern(n, window, dilation, causal).flops(batch, heads, e)
