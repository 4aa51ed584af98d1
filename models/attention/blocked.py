"""Blocked sparse attention, the kernel shared by `local`, `hybrid`, `longformer`, `bigbird` and `sparse`:
a band of key blocks per query block, plus keys every query sees (global tokens, summary positions),
gathered key blocks per query block (random blocks), strided keys (j = i mod the block), and dense rows
for global queries, all masked once and normalised by one softmax per query. Never an n x n matrix.

A mechanism describes its pattern as a `BlockPattern`: the geometry the kernel computes (block length W,
band reach, the extra key sets) and `rule(i, j)`, the paper's definition of which key j query i may see
(original positions, broadcasting). The kernel computes every pair the geometry covers, keeps those the
rule allows, each pair once (shared keys only in their own part; gathered and strided parts drop what the
band or the shared keys give), and masks the rest; the dense (B, h, n, n) matrix on request is the same
rule written densely. Tests compare the two with an allowed matrix written independently from each paper.

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
        ends, and each pair once."""
        i, j, ok = self.key_grid(device)
        ic, jc = i.clamp(max=self.n - 1), j.clamp(0, self.n - 1)
        allowed = ok & self.rule(ic, jc)
        if causal:
            allowed &= jc <= ic
        # each pair once: shared keys belong to the shared part (so the band's mask stays the same from block to
        # block), gathered and strided parts drop what the band or the shared keys give
        in_shared = torch.zeros(self.n, dtype=torch.bool, device=device)
        if self.shared is not None:
            in_shared[self.shared.to(device)] = True
        first, S = self.span, 0 if self.shared is None else len(self.shared)
        allowed[..., :first] &= ~in_shared[jc[..., :first]]
        rest = jc[..., first + S :]
        allowed[..., first + S :] &= ~(self._covers_band(ic, rest) | in_shared[rest])
        return j, allowed

    def masks(self, causal: bool, mask: Optional[Tensor], dtype: torch.dtype, device) -> "Masks":
        """The structural mask merged with padding (mask False), once for all heads. Without padding, where
        most blocks share one mask (a band), it is kept as runs of blocks with the (W, K) mask they share plus
        the few blocks that differ (cached per (causal, device)); otherwise as an additive bias
        (B | 1, G, nb, W, K): 0 where allowed, masked_value elsewhere."""
        key = (causal, dtype, str(device))
        if mask is None and key in self._bias:
            return self._bias[key]
        j, allowed = self.structure(causal, device)
        if mask is None:
            runs = _runs_of_shared_masks(allowed, dtype)
            if runs is not None:
                self._bias[key] = Masks(None, runs)
                return self._bias[key]
            allowed = allowed[None]
        else:
            allowed = allowed[None] & mask[:, j.clamp(0, self.n - 1)]  # (B, G, nb, W, K)
        out = Masks(_additive(allowed, dtype), None)
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


def _additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, masked_value(dtype))


@dataclass(frozen=True)
class Masks:
    """What `blocked_attention` masks with: an additive bias, or per residue group a list of (first block,
    last block + 1, additive (W, K) bias) added in place after the scores are computed (a broadcast add is
    far cheaper than masked_fill_ here)."""

    bias: Optional[Tensor]
    runs: Optional[List[List[Tuple[int, int, Tensor]]]]


def _runs_of_shared_masks(allowed: Tensor, dtype: torch.dtype) -> Optional[List[List[Tuple[int, int, Tensor]]]]:
    """allowed (G, nb, W, K) -> per group, runs of consecutive blocks with one mask, or None when more than
    a quarter of the blocks (at least 2) differ from the middle block's mask (then a bias is cheaper)."""
    G, nb = allowed.shape[:2]
    out = []
    for g in range(G):
        typical = allowed[g, nb // 2]
        same = (allowed[g] == typical).flatten(1).all(-1).tolist()  # (nb,)
        if same.count(False) > max(2, nb // 4):
            return None
        runs, start = [], 0
        for blk in range(nb + 1):
            if blk == nb or not same[blk]:
                if blk > start:
                    runs.append((start, blk, _additive(typical, dtype)))
                if blk < nb:
                    runs.append((blk, blk + 1, _additive(allowed[g, blk], dtype)))
                start = blk + 1
        out.append(runs)
    return out


# --------------------------------------------------------------------------- the kernel


def _to_layout(t: Tensor, p: BlockPattern, front: int, back: int) -> Tensor:
    """(B, h, n, e) -> (B, h, G, (front + nb + back) * W, e), contiguous: zero blocks before and after, each
    residue group's positions in order. One copy (two with dilation). Contiguous heads keep every batched
    matmul below on BLAS's batched path (strided matrices fall back to one call per block)."""
    B, h, n, e = t.shape
    d, W = p.dilation, p.block
    head, tail = front * W * d, (front + p.blocks + back) * W * d - front * W * d - n
    parts = ([t.new_zeros(B, h, head, e)] if head else []) + [t] + ([t.new_zeros(B, h, tail, e)] if tail else [])
    t = torch.cat(parts, 2) if len(parts) > 1 else t.contiguous()  # (B, h, total, e)
    if d == 1:
        return t.view(B, h, 1, t.shape[2], e)
    return t.view(B, h, t.shape[2] // d, d, e).transpose(2, 3).contiguous()


def _from_layout(y: Tensor, p: BlockPattern) -> Tensor:
    """(B, h, G, nb * W, e) -> (B, h, n, e)"""
    B, h, d, Lp, e = y.shape
    if d > 1:
        y = y.transpose(2, 3)
    return y.reshape(B, h, Lp * d, e)[:, :, : p.n]


def _scores(out: Optional[Tensor], bias: Optional[Tensor], a: Tensor, b: Tensor, scale: float) -> Tensor:
    """scale * a @ b (+ bias): addmm for matrices, baddbmm for batches; into `out` when given (no autograd)."""
    op = torch.addmm if a.dim() == 2 else torch.baddbmm
    beta = 1
    if bias is None:
        bias, beta = a.new_zeros(()).expand(*a.shape[:-1], b.shape[-1]), 0
    return op(bias, a, b, beta=beta, alpha=scale, out=out)


class _Head:
    """One (batch element, head, residue group): its queries in blocks and the keys / values of every part,
    as contiguous (or transposed-contiguous) matrices."""

    def __init__(self, p: BlockPattern, ql: Tensor, kl: Tensor, vl: Tensor, shared, gathered, b: int, hh: int, g: int):
        W, nb, span = p.block, p.blocks, p.span
        e = ql.shape[-1]
        self.q = ql[b, hh, g].view(nb, W, e)  # (nb, W, e)
        self.k = {"band": kl[b, hh, g].unfold(0, span, W)}  # (nb, e, span): overlapping windows, a view
        self.v = {"band": vl[b, hh, g].unfold(0, span, W).transpose(1, 2)}  # (nb, span, e)
        if shared is not None:
            self.k["shared"], self.v["shared"] = shared[0][b, hh].T, shared[1][b, hh]  # (e, S), (S, e)
        if gathered is not None:  # the r key blocks of each query block, one index_select per head: (nb, r W, e)
            own = slice(p.before * W, p.before * W + nb * W)
            pick = lambda t: t[b, hh, 0, own].view(nb, W * e).index_select(0, gathered).view(nb, -1, e)  # noqa: E731
            self.k["gathered"], self.v["gathered"] = pick(kl).transpose(-2, -1), pick(vl)
        if p.strided:  # residue order: row r of every block, keys t W + r
            own = slice(p.before * W, p.before * W + nb * W)
            self.qr = self.q.transpose(0, 1).contiguous()  # (W, nb, e)
            self.k["strided"] = kl[b, hh, 0, own].view(nb, W, e).transpose(0, 1).contiguous().transpose(1, 2)  # (W, e, nb)
            self.v["strided"] = vl[b, hh, 0, own].view(nb, W, e).transpose(0, 1).contiguous()  # (W, nb, e)

    def scores(self, part: str, out: Optional[Tensor], bias: Optional[Tensor], scale: float) -> Tensor:
        """(nb, W, size) scores of one part ((W, nb, nb), residue order, for the strided part)."""
        nb, W, e = self.q.shape
        if part == "shared":  # every row against the same keys: one (nb W, S) product
            flat = lambda t: None if t is None else t.reshape(nb * W, -1)  # noqa: E731
            return _scores(flat(out), flat(bias), self.q.view(nb * W, e), self.k[part], scale).view(nb, W, -1)
        if part == "strided":
            return _scores(out, None if bias is None else bias.transpose(0, 1), self.qr, self.k[part], scale)
        return _scores(out, bias, self.q, self.k[part], scale)

    def apply(self, part: str, a: Tensor, out: Optional[Tensor] = None) -> Tensor:
        """a @ values of one part, (nb, W, e); `a` in the part's own order."""
        nb, W, e = self.q.shape
        if part == "shared":
            return torch.mm(a.reshape(nb * W, -1), self.v[part], out=None if out is None else out.view(nb * W, e)).view(nb, W, e)
        y = torch.bmm(a, self.v[part], out=out)
        return y.transpose(0, 1) if part == "strided" else y


def _masks_of(masks: Masks, b: int, g: int, offsets: List[int]):
    """Per part, its slice of the bias (or None), and the runs of group g (or None)."""
    bias = None if masks.bias is None else masks.bias[b if masks.bias.shape[0] > 1 else 0, g]  # (nb, W, K)
    biases = [None if bias is None else bias[..., lo:hi] for lo, hi in zip(offsets, offsets[1:])]
    return biases, None if masks.runs is None else masks.runs[g]


def _add_bias(scores: Tensor, runs, lo: int, hi: int, strided: bool = False) -> None:
    """The runs' bias for one part (keys lo:hi of the merged layout) added in place; all-zero slices skipped."""
    target = scores.transpose(0, 1) if strided else scores  # block-major view
    for start, stop, bias in runs:
        part = bias[..., lo:hi]
        if bool(part.any()):
            target[start:stop].add_(part)


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, p: BlockPattern, mask: Optional[Tensor], causal: bool,
                      scale: float) -> Tensor:
    """q, k, v: (B, h, n, e); mask: (B, n) bool padding mask (True = real) or None. Returns (B, h, n, e).
    Softmax over the allowed keys of each query, computed block by block (see the module docstring).
    With autograd: the parts' scores are concatenated and normalised by one softmax. Without (no_grad, or no
    input needing a gradient): each part's scores go into a buffer reused by every head, each part takes its
    own softmax in place, and the parts' outputs are weighted by their share of the row's total: the same
    matmuls, so the same FLOPs, and no copy of the scores."""
    B, h, n, e = q.shape
    if n != p.n:
        raise ValueError(f"the pattern was built for {p.n} positions, got a sequence of {n}")
    W, nb, G = p.block, p.blocks, p.dilation
    Lp = nb * W
    inference = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    masks = p.masks(causal, mask, q.dtype, q.device)
    sizes = p.part_sizes()
    offsets = [sum(size for _, size in sizes[:i]) for i in range(len(sizes) + 1)]
    ql = _to_layout(q, p, 0, 0)  # (B, h, G, Lp, e)
    kl = _to_layout(k, p, p.before, p.after)  # (B, h, G, (before + nb + after) W, e)
    vl = _to_layout(v, p, p.before, p.after)
    shared = gathered = None
    if p.shared is not None:
        S = p.shared.to(q.device)
        shared = k[:, :, S], v[:, :, S]  # (B, h, S, e)
    if p.gathered is not None:
        R = p.gathered.to(q.device).clamp(min=0)  # empty slots read block 0 and are masked
        gathered = R.reshape(-1)  # (nb r,) key blocks, query block by query block
    Y = q.new_empty(B, h, G, Lp, e)
    if inference:
        bufs = {part: q.new_empty((W, nb, nb) if part == "strided" else (nb, W, size)) for part, size in sizes}
        if len(sizes) > 1:
            tmp = q.new_empty(nb, W, e)
    ys = []
    for b in range(B):
        for hh in range(h):
            for g in range(G):
                head = _Head(p, ql, kl, vl, shared, gathered, b, hh, g)
                biases, runs = _masks_of(masks, b, g, offsets)
                if not inference:
                    parts = [head.scores(part, None, bp, scale) for (part, _), bp in zip(sizes, biases)]
                    parts = [t.transpose(0, 1) if part == "strided" else t for (part, _), t in zip(sizes, parts)]
                    scores = torch.cat(parts, -1) if len(parts) > 1 else parts[0]  # (nb, W, K)
                    if runs is not None:
                        _add_bias(scores, runs, 0, offsets[-1])
                    a = scores.softmax(-1)
                    y = None
                    for (part, _), lo, hi in zip(sizes, offsets, offsets[1:]):
                        ap = a[..., lo:hi].transpose(0, 1) if part == "strided" else a[..., lo:hi]
                        y = head.apply(part, ap) if y is None else y + head.apply(part, ap)
                    ys.append(y)
                    continue
                for (part, _), bp, lo, hi in zip(sizes, biases, offsets, offsets[1:]):
                    s = head.scores(part, bufs[part], bp, scale)
                    if runs is not None:
                        _add_bias(s, runs, lo, hi, strided=part == "strided")
                out = Y[b, hh, g].view(nb, W, e)
                if len(sizes) == 1:
                    a = torch.ops.aten._softmax.out(bufs["band"], -1, False, out=bufs["band"])  # in place
                    head.apply("band", a, out=out)
                    continue
                # softmax across the parts: each part's own softmax in place (fast, even over masked scores),
                # then the parts weighted by exp(max_p - max) * sum_p, where sum_p = 1 / (the part's largest
                # probability), and the output divided by the total once
                blockwise = {part: t.transpose(0, 1) if part == "strided" else t for part, t in bufs.items()}
                maxima = {part: t.amax(-1, keepdim=True) for part, t in blockwise.items()}  # (nb, W, 1) each
                top = torch.stack(list(maxima.values())).amax(0)
                total = None
                for part, _ in sizes:
                    torch.ops.aten._softmax.out(bufs[part], -1, False, out=bufs[part])
                    weight = (maxima[part] - top).exp_().div_(blockwise[part].amax(-1, keepdim=True))
                    total = weight if total is None else total.add_(weight)
                    if part == "band":
                        head.apply(part, bufs[part], out=out).mul_(weight)
                    elif part == "strided":
                        out.addcmul_(torch.bmm(bufs[part], head.v[part], out=tmp.view(W, nb, e)).transpose(0, 1), weight)
                    else:
                        out.addcmul_(head.apply(part, bufs[part], out=tmp), weight)
                out.div_(total)
    y = _from_layout(Y if inference else torch.stack(ys).view(B, h, G, Lp, e), p)  # (B, h, n, e)
    if p.global_rows is not None and len(p.global_rows):
        rows = p.global_rows.to(q.device)
        rb = p.row_bias(causal, mask, q.dtype, q.device)  # (B | 1, R, n)
        qr = q[:, :, rows]  # (B, h, R, e)
        front = p.before * W
        yr = []
        for b in range(B):  # keys and values from the contiguous layout where it holds them in order
            kb, vb = (kl[b, :, 0, front : front + n], vl[b, :, 0, front : front + n]) if G == 1 else (k[b], v[b])
            s = torch.baddbmm(rb[b if rb.shape[0] > 1 else 0].expand(h, -1, -1), qr[b], kb.transpose(1, 2), alpha=scale)
            yr.append(torch.bmm(s.softmax(-1), vb))  # (h, R, e)
        y = y.index_copy(2, rows, torch.stack(yr))
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


# --------------------------------------------------------------------------- a mechanism's whole step


def attend(attn, x: Tensor, pattern: Callable[[int], BlockPattern], mask: Optional[Tensor], causal: bool,
           need_weights: bool, ranks: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """The attention step of a blocked mechanism `attn` (an Attention with the merged `qkv` projection):
    (B, h, n, e) outputs, and the (B, h, n, n) weights on request. `pattern(n)` gives the pattern for n
    positions; `ranks`: positions are ranks among the real tokens (`by_rank`), otherwise padding keys are
    masked in place."""
    n = x.shape[1]
    if ranks and mask is not None and bool(mask.all()):
        mask = None
    q, k, v = attn.project_qkv(x)  # (B, h, n, e)
    if not ranks:
        p = pattern(n)
        y = blocked_attention(q, k, v, p, mask, causal, attn.scale)
        return y, dense_weights(q, k, p, mask, causal, attn.scale) if need_weights else None
    y = by_rank(lambda q, k, v: blocked_attention(q, k, v, pattern(q.shape[2]), None, causal, attn.scale), q, k, v, mask)
    w = None
    if need_weights:
        w = by_rank(lambda q, k, v: dense_weights(q, k, pattern(q.shape[2]), None, causal, attn.scale), q, k, v, mask,
                    square=True)
    return y, w


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
