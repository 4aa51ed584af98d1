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

Layout: every (batch element, head, residue group mod `dilation`) is one sequence of L = ceil(n / G)
positions cut into nb blocks of W, and all of them sit end to end in one flat buffer, each as a segment of
`before` zero blocks, its nb blocks and `after` zero blocks. The band of query block b is key blocks
b - before .. b + after, an overlapping `unfold` view of that buffer (no copy of the windows), so one
batched matmul covers the band of every head at once (a chunk of heads for long sequences; the before +
after padding blocks of each segment are computed too, and charged). Masks (the rule, causality, padding,
sequence ends) are merged once into one additive bias shared by all heads. The queries are scaled as they
are laid out, so the score products are plain `bmm`.

Axis letters: B batch, h heads, n length, e head dim, G residue groups, nb blocks, W block length,
K keys computed per query (span W * (before + 1 + after) + shared + gathered + strided).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache, wraps
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .functional import append_cache, masked_softmax

Rule = Callable[[Tensor, Tensor], Tensor]


def masked_value(dtype: torch.dtype) -> float:
    """What a disallowed score becomes: finite (half the dtype's minimum, so adding a score cannot overflow),
    so a row with no allowed key gives a finite (meaningless) output, and exp() of it is exactly 0 beside any
    allowed key."""
    return torch.finfo(dtype).min / 2



def pattern_cache(maxsize: int):
    """lru_cache for pattern builders, building under inference_mode(False): a pattern first made during
    validation (Lightning runs it in inference mode) must still serve training's autograd."""
    def wrap(fn):
        @wraps(fn)
        def build(*args):
            with torch.inference_mode(False):
                return fn(*args)
        return lru_cache(maxsize=maxsize)(build)
    return wrap


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
    def segment(self) -> int:  # query blocks computed per group: nb, then before + after blocks of padding
        return self.blocks + self.before + self.after

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
        for every computed pair, padded blocks included (each group computes `segment` query blocks, the last
        before + after of them padding: the price of one batched product over all heads), plus the dense
        global rows."""
        rows = self.dilation * self.segment * self.block  # query rows computed per head
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
        """Original positions of the computed queries (G, Q, W, 1) and keys (G, Q, W, K) for the Q = segment
        query blocks (the last before + after are padding), and whether each key exists (inside the sequence,
        not an empty slot)."""
        d, W, nb, n, Q = self.dilation, self.block, self.blocks, self.n, self.segment
        ar = lambda m: torch.arange(m, device=device)  # noqa: E731
        g, blk, r = ar(d).view(d, 1, 1, 1), ar(Q).view(1, Q, 1, 1), ar(W).view(1, 1, W, 1)
        qpos = (blk * W + r) * d + g  # (G, Q, W, 1)
        keys, exists = [], []
        for part, size in self.part_sizes():
            if part == "band":
                kl = (blk - self.before) * W + ar(size).view(1, 1, 1, size)  # (1, Q, 1, span) within the group
                kp = kl * d + g  # (G, Q, 1, span)
                ok = (kl >= 0) & (kl < nb * W) & (kp < n)
            elif part == "shared":
                kp = self.shared.to(device).view(1, 1, 1, size)
                ok = torch.ones_like(kp, dtype=torch.bool)
            elif part == "gathered":
                R = self.gathered_segment().to(device)  # (Q, r)
                kp = (R[:, :, None] * W + ar(W)).reshape(1, Q, 1, size)
                ok = (R[:, :, None] >= 0).expand(-1, -1, W).reshape(1, Q, 1, size) & (kp < n)
            else:  # strided: row r of a block sees positions t * W + r, t over all blocks
                kp = ar(nb).view(1, 1, 1, nb) * W + r  # (1, 1, W, nb)
                ok = kp < n
            keys.append(kp.expand(d, Q, W, size))
            exists.append(ok.expand(d, Q, W, size))
        return qpos, torch.cat(keys, -1), torch.cat(exists, -1)

    def gathered_segment(self) -> Tensor:
        """The gathered key blocks of every computed query block, (segment, r): none (-1) for padding blocks."""
        R = self.gathered
        return torch.cat([R, R.new_full((self.segment - self.blocks, R.shape[1]), -1)])

    def structure(self, causal: bool, device) -> Tuple[Tensor, Tensor]:
        """Key positions (G, Q, W, K) and the structural mask (G, Q, W, K): the rule, causality, sequence
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

    def bias(self, causal: bool, mask: Optional[Tensor], dtype: torch.dtype, device) -> Tensor:
        """Additive bias (B | 1, G, Q, W, K): 0 where allowed, masked_value elsewhere, with padding keys (mask
        False) merged in once for all heads. Without a mask it is cached per (causal, dtype, device)."""
        key = (causal, dtype, str(device))
        if mask is None and key in self._bias:
            return self._bias[key]
        with torch.inference_mode(mask is not None and torch.is_inference_mode_enabled()):  # cached: a normal tensor
            j, allowed = self.structure(causal, device)
            allowed = allowed[None] if mask is None else allowed[None] & mask[:, j.clamp(0, self.n - 1)]  # (B, G, Q, W, K)
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


def _flat_layout(t: Tensor, p: BlockPattern, front: int, extra: int, scale: float = 1.0) -> Tensor:
    """(B, h, n, e) -> a flat (B h G segment W + extra W, e) buffer: per (batch, head, residue group) one
    segment of `segment` blocks, the group's positions in order after `front` zero blocks, zeros after them;
    `extra` zero blocks at the very end (so the last segment's windows stay inside). One copy (two with
    dilation). Contiguous, so every product below is one call on BLAS's batched path over all heads. `scale`
    multiplies the values on the way (the queries' 1 / sqrt(e), so the score products need no scaling)."""
    B, h, n, e = t.shape
    d, W, L, Q = p.dilation, p.block, p.length, p.segment
    buf = t.new_empty((B * h * d * Q + extra) * W, e)
    seg = buf[: B * h * d * Q * W].view(B, h, d, Q * W, e)
    seg[:, :, :, : front * W].zero_()
    seg[:, :, :, front * W + L :].zero_()
    buf[B * h * d * Q * W :].zero_()
    if d > 1:
        t = torch.cat([t, t.new_zeros(B, h, L * d - n, e)], 2) if L * d > n else t
        t = t.view(B, h, L, d, e).transpose(2, 3)  # (B, h, G, L, e)
        dst = seg[:, :, :, front * W : front * W + L]
    else:
        dst = seg[:, :, 0, front * W : front * W + n]
    if scale == 1.0:
        dst.copy_(t)
    elif t.requires_grad and torch.is_grad_enabled():
        dst.copy_(t * scale)
    else:
        torch.mul(t, scale, out=dst)  # scaled while copied
    return buf


SCORES_BUDGET = 32 * 2**20  # bytes of scores computed at once: heads go in chunks of about this much


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, p: BlockPattern, mask: Optional[Tensor], causal: bool,
                      scale: float) -> Tensor:
    """q, k, v: (B, h, n, e); mask: (B, n) bool padding mask (True = real) or None. Returns (B, h, n, e).
    Softmax over the allowed keys of each query, computed block by block (see the module docstring), each
    part in one batched product over a chunk of heads (about SCORES_BUDGET bytes of scores) and all their
    query blocks. With autograd the parts' scores are concatenated and normalised by one softmax; without
    (no_grad, or no input needing a gradient) the score buffers are reused from chunk to chunk, each part
    takes its own softmax in place and the parts' outputs are weighted by their share of the row's total:
    the same matmuls, so the same FLOPs, and no copy of the scores."""
    B, h, n, e = q.shape
    if n != p.n:
        raise ValueError(f"the pattern was built for {p.n} positions, got a sequence of {n}")
    W, nb, G, Q = p.block, p.blocks, p.dilation, p.segment
    ba = p.before + p.after
    H = B * h * G  # independent sequences: (batch, head, residue group)
    inference = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    bias = p.bias(causal, mask, q.dtype, q.device)  # (B | 1, G, Q, W, K)
    sizes = p.part_sizes()
    offsets = [sum(size for _, size in sizes[:i]) for i in range(len(sizes) + 1)]
    K = offsets[-1]
    qf = _flat_layout(q, p, 0, 0, scale).view(H * Q, W, e)  # scaled query blocks, then ba padding blocks, per sequence
    kf, vf = _flat_layout(k, p, p.before, ba), _flat_layout(v, p, p.before, ba)  # keys after `before` zero blocks
    ks = vs = R = None
    if p.shared is not None:
        S = p.shared.to(q.device)
        ks, vs = (t[:, :, S][:, :, None].expand(B, h, G, len(S), e).reshape(H, len(S), e) for t in (k, v))
    if p.gathered is not None:
        R = p.gathered_segment().to(q.device).clamp(min=0).reshape(-1)  # empty slots read block 0, masked
    per_head = G * Q * W * K * q.element_size()
    nh = max(1, min(h, SCORES_BUDGET // max(1, per_head)))
    bufs = {}
    Y = q.new_empty(H * Q, W, e) if inference else None
    ys = []
    for b in range(B):
        bias_b = bias[b if bias.shape[0] > 1 else 0]  # (G, Q, W, K)
        for h0 in range(0, h, nh):
            c0, c1 = (b * h + h0) * G, (b * h + min(h, h0 + nh)) * G  # sequences c0 .. c1 - 1
            chunk = _Chunk(p, qf[c0 * Q : c1 * Q], kf[c0 * Q * W : (c1 * Q + ba) * W], vf[c0 * Q * W : (c1 * Q + ba) * W],
                           None if ks is None else (ks[c0:c1], vs[c0:c1]), R)
            out = Y[c0 * Q : c1 * Q] if inference else None
            y = chunk.attend(sizes, offsets, bias_b, bufs if inference else None, out)
            if not inference:
                ys.append(y)
    y = (Y if inference else torch.cat(ys)).view(B, h, G, Q * W, e)[:, :, :, : nb * W]
    y = _from_layout(y, p)  # (B, h, n, e)
    if p.global_rows is not None and len(p.global_rows):
        rows = p.global_rows.to(q.device)
        rb = p.row_bias(causal, mask, q.dtype, q.device)  # (B | 1, R, n)
        qr = q[:, :, rows]  # (B, h, R, e)
        front = p.before * W
        seq = lambda t, b: t[: H * Q * W].view(B, h, Q * W, e)[b, :, front : front + n]  # noqa: E731 (G = 1)
        yr = []
        for b in range(B):  # keys and values from the contiguous layout where it holds them in order
            kb, vb = (seq(kf, b), seq(vf, b)) if G == 1 else (k[b], v[b])
            s = torch.baddbmm(rb[b if rb.shape[0] > 1 else 0].expand(h, -1, -1), qr[b], kb.transpose(1, 2), alpha=scale)
            yr.append(torch.bmm(s.softmax(-1), vb))  # (h, R, e)
        y = y.index_copy(2, rows, torch.stack(yr))
    return y


class _Chunk:
    """Consecutive sequences (heads x residue groups of one batch element) of the flat layout: queries
    (Hc Q, W, e), keys and values (Hc Q W + ba W, e) rows, the shared keys and values (Hc, S, e)."""

    def __init__(self, p: BlockPattern, qf: Tensor, kf: Tensor, vf: Tensor, shared, R: Optional[Tensor]):
        self.p, self.qf, self.kf, self.vf, self.shared, self.R = p, qf, kf, vf, shared, R
        self.T, self.W, self.e = qf.shape
        self.Q = p.segment
        self.Hc = self.T // self.Q

    def own(self, t: Tensor) -> Tensor:  # (Hc, nb, W, e): each sequence's real key blocks
        p = self.p
        return t[: self.T * self.W].view(self.Hc, self.Q, self.W, self.e)[:, p.before : p.before + p.blocks]

    def scores(self, part: str, out: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """Scores of one part, (T, W, size) ((Hc W, Q, nb) in residue order for the strided part), and its values."""
        p, T, W, e, Hc, Q = self.p, self.T, self.W, self.e, self.Hc, self.Q
        if part == "band":  # overlapping windows of the flat keys: window t covers key blocks t .. t + ba
            kw = self.kf.unfold(0, p.span, W)  # (T, e, span), a view
            return torch.bmm(self.qf, kw, out=out), self.vf.unfold(0, p.span, W).transpose(1, 2)
        if part == "shared":  # every query of a sequence against the same keys: (Hc, Q W, S)
            ks, vs = self.shared
            o = None if out is None else out.view(Hc, Q * W, -1)
            return torch.bmm(self.qf.view(Hc, Q * W, e), ks.transpose(1, 2), out=o).view(T, W, -1), vs
        if part == "gathered":  # the r key blocks of each query block: (T, r W, e)
            kg, vg = (self.own(t).reshape(Hc, p.blocks, W * e).index_select(1, self.R).view(T, -1, e) for t in (self.kf, self.vf))
            return torch.bmm(self.qf, kg.transpose(1, 2), out=out), vg
        # strided, residue order: row r of every query block against keys t W + r of every key block
        qr = self.qf.view(Hc, Q, W, e).transpose(1, 2).reshape(Hc * W, Q, e)
        kr, vr = (self.own(t).transpose(1, 2).reshape(Hc * W, p.blocks, e) for t in (self.kf, self.vf))
        return torch.bmm(qr, kr.transpose(1, 2), out=out), vr

    def block_order(self, part: str, t: Tensor) -> Tensor:  # residue-order (Hc W, Q, x) as (T, W, x)
        return t.view(self.Hc, self.W, self.Q, -1).transpose(1, 2).reshape(self.T, self.W, -1) if part == "strided" else t

    def apply(self, part: str, a: Tensor, v: Tensor, out: Optional[Tensor] = None) -> Tensor:
        """a @ v of one part as (T, W, e) in block order (`a` in the part's own order)."""
        if part == "shared":
            o = None if out is None else out.view(self.Hc, self.Q * self.W, self.e)
            return torch.bmm(a.reshape(self.Hc, self.Q * self.W, -1), v, out=o).view(self.T, self.W, self.e)
        if part == "strided":
            return self.block_order(part, torch.bmm(a, v))
        return torch.bmm(a, v, out=out)

    def attend(self, sizes, offsets, bias: Tensor, bufs: Optional[dict], out: Optional[Tensor]) -> Tensor:
        """The chunk's outputs (T, W, e). bias (G, Q, W, K); bufs: reused score buffers (inference), else None."""
        G, Q, W = self.p.dilation, self.Q, self.W
        nh = self.Hc // G
        scores, values = {}, {}
        for (part, size), lo, hi in zip(sizes, offsets, offsets[1:]):
            buf = None
            if bufs is not None:
                shape = (self.Hc * W, Q, size) if part == "strided" else (self.T, W, size)
                if part not in bufs or bufs[part].numel() < self.T * W * size:
                    bufs[part] = self.qf.new_empty(shape)
                buf = bufs[part].view(-1)[: self.T * W * size].view(shape)
            s, values[part] = self.scores(part, buf)
            bp = bias[..., lo:hi]  # (G, Q, W, size), the same for every head
            if part == "strided":
                s.view(nh, G, W, Q, size).add_(bp.transpose(-3, -2))
            else:
                s.view(nh, G, Q, W, size).add_(bp)
            scores[part] = s
        if bufs is None:  # autograd: one softmax over the concatenated parts
            parts = [self.block_order(part, scores[part]) for part, _ in sizes]
            a = (torch.cat(parts, -1) if len(parts) > 1 else parts[0]).softmax(-1)  # (T, W, K)
            y = None
            for (part, _), lo, hi in zip(sizes, offsets, offsets[1:]):
                ap = a[..., lo:hi]
                if part == "strided":
                    ap = ap.reshape(self.Hc, Q, W, -1).transpose(1, 2).reshape(self.Hc * W, Q, -1)
                y = self.apply(part, ap, values[part]) if y is None else y + self.apply(part, ap, values[part])
            return y
        if len(sizes) == 1:
            a = torch.ops.aten._softmax.out(scores["band"], -1, False, out=scores["band"])  # in place
            return self.apply("band", a, values["band"], out=out)
        # each part's own softmax in place (fast, even over masked scores), weighted by exp(max_p - max) *
        # sum_p, where sum_p = 1 / (the part's largest probability); the output divided by the total once
        maxima = {part: self.block_order(part, t.amax(-1, keepdim=True)) for part, t in scores.items()}  # (T, W, 1)
        top = torch.stack(list(maxima.values())).amax(0)
        total = y = None
        for part, _ in sizes:
            a = torch.ops.aten._softmax.out(scores[part], -1, False, out=scores[part])
            weight = (maxima[part] - top).exp_().div_(self.block_order(part, a.amax(-1, keepdim=True)))
            total = weight if total is None else total.add_(weight)
            if y is None:
                y = self.apply(part, a, values[part], out=out).mul_(weight)
            else:
                y.addcmul_(self.apply(part, a, values[part]), weight)
        return y.div_(total)


def _from_layout(y: Tensor, p: BlockPattern) -> Tensor:
    """(B, h, G, nb * W, e) -> (B, h, n, e)"""
    B, h, d, Lp, e = y.shape
    if d > 1:
        y = y.transpose(2, 3)
    return y.reshape(B, h, Lp * d, e)[:, :, : p.n]


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


@pattern_cache(maxsize=16)
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


# --------------------------------------------------------------------------- incremental decoding

DECODE_ROWS = 256  # queries per chunk of a many-position step (a prompt's prefill): its scores stay (rows, keys)


def rule_attention(q: Tensor, k: Tensor, v: Tensor, qpos: Tensor, kpos: Tensor, rule: Rule, scale: float) -> Tensor:
    """The decoding counterpart of `blocked_attention`: causal softmax of queries at original positions qpos (t,)
    over keys at kpos (K,), restricted to the pairs `rule` allows. q: (B, h, t, e); k, v: (B, h, K, e). Returns
    (B, h, t, e). Queries go in chunks of DECODE_ROWS, each multiplied only by the keys some query of the chunk
    may see (one new token of a sparse pattern: its reachable keys, not the whole cache)."""
    out = []
    for a in range(0, q.shape[2], DECODE_ROWS):
        i = qpos[a : a + DECODE_ROWS, None]  # (c, 1)
        allowed = rule(i, kpos[None, :]) & (kpos[None, :] <= i)  # (c, K)
        cols = allowed.any(0).nonzero().squeeze(1)
        kc, vc, ok = (k, v, allowed) if len(cols) == len(kpos) else (k[:, :, cols], v[:, :, cols], allowed[:, cols])
        s = (q[:, :, a : a + DECODE_ROWS] * scale) @ kc.transpose(-2, -1)  # (B, h, c, K')
        out.append(masked_softmax(s, ok) @ vc)
    return torch.cat(out, dim=2) if len(out) > 1 else out[0]


def window_step(state: Dict, k: Tensor, v: Tensor, reach: int, keep: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """The keys a decoding step of a windowed pattern attends over, and its cache updated in `state` (in place).

    A query i sees at most the keys i - reach .. i plus the first `keep` positions (global tokens), so the cache
    holds the first `keep` positions' keys and values (state "gk", "gv") and the last `reach` of the later ones
    ("k", "v"): at most keep + reach positions whatever the length. k, v: (B, h, t, e), the t new positions after
    state["pos"]. Returns keys and values (B, h, K, e) (kept, cached window, new) and their positions (K,)."""
    pos, t = state["pos"], k.shape[2]
    g = max(0, min(keep, pos + t) - pos)  # new positions that are kept ones
    parts_k, parts_v, positions = [], [], []
    if keep:
        if g:
            append_cache(state, "gk", k[:, :, :g])
            append_cache(state, "gv", v[:, :, :g])
        parts_k.append(state["gk"])
        parts_v.append(state["gv"])
        positions.append(torch.arange(state["gk"].shape[2], device=k.device))
    wk, wv = k[:, :, g:], v[:, :, g:]
    if "k" in state:  # the whole window for this step; the state keeps only its last `reach` below
        wk, wv = append_cache(state, "k", wk), append_cache(state, "v", wv)
    parts_k.append(wk)
    parts_v.append(wv)
    positions.append(torch.arange(pos + t - wk.shape[2], pos + t, device=k.device))
    if wk.shape[2]:  # a copy once trimmed, so the state does not keep a prefill's whole buffer alive
        state["k"], state["v"] = (t[:, :, -reach:].clone() if t.shape[2] > reach else t for t in (wk, wv))
    keys, values = (torch.cat(p, 2) if len(p) > 1 else p[0] for p in (parts_k, parts_v))
    return keys, values, torch.cat(positions) if len(positions) > 1 else positions[0]
