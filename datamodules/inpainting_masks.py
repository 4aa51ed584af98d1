"""Inpainting masks, (H, W) bool with True = HOLE, drawn with torch ops from the generator handed in:
"center" (a centred square), "boxes" (random rectangles), "strokes" (random-walk brush strokes: chains of
thick line segments). `fraction` is the target fraction of masked pixels: boxes and strokes are drawn until
the hole reaches it (the last box row by row, the last stroke disc by disc, so the overshoot is at most one
row / one disc); "center" uses the square closest to it.
"""
from __future__ import annotations

import math

import torch

MASK_KINDS = ("center", "boxes", "strokes")


def center_mask(h: int, w: int, fraction: float) -> torch.Tensor:
    side_h = min(h, round(math.sqrt(fraction) * h))
    side_w = min(w, round(math.sqrt(fraction) * w))
    m = torch.zeros(h, w, dtype=torch.bool)
    top, left = (h - side_h) // 2, (w - side_w) // 2
    m[top : top + side_h, left : left + side_w] = True
    return m


def _uniform(g, lo, hi):
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(g, lo, hi):
    """An int in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=g).item())


def boxes_mask(h: int, w: int, fraction: float, g: torch.Generator) -> torch.Tensor:
    """Random rectangles (each up to about a third of the target area) until `fraction` of the pixels is covered."""
    m = torch.zeros(h, w, dtype=torch.bool)
    target = round(fraction * h * w)
    covered = 0
    for _ in range(200):
        if covered >= target:
            break
        area = _uniform(g, 0.15, 0.4) * fraction * h * w
        aspect = math.exp(_uniform(g, math.log(0.5), math.log(2.0)))
        bh = max(1, min(h, round(math.sqrt(area / aspect))))
        bw = max(1, min(w, round(math.sqrt(area * aspect))))
        top, left = _randint(g, 0, h - bh), _randint(g, 0, w - bw)
        new = m.clone()
        new[top : top + bh, left : left + bw] = True
        n_new = int(new.sum())
        if n_new <= target:
            m, covered = new, n_new
            continue
        for r in range(top, top + bh):  # the last box: row by row, stopping where the target is reached
            m[r, left : left + bw] = True
            covered = int(m.sum())
            if covered >= target:
                break
    return m


def strokes_mask(h: int, w: int, fraction: float, g: torch.Generator) -> torch.Tensor:
    """Random walks of thick line segments (brush strokes): whole segments drawn as capsules while they fit under
    the target, the last one stamped disc by disc until the target is met."""
    m = torch.zeros(h, w, dtype=torch.bool)
    target = round(fraction * h * w)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    size = min(h, w)
    covered = 0
    for _ in range(50):  # strokes
        if covered >= target:
            break
        radius = _uniform(g, 0.04, 0.09) * size + 0.5
        y, x = _uniform(g, 0, h - 1), _uniform(g, 0, w - 1)
        angle = _uniform(g, 0, 2 * math.pi)
        for _ in range(_randint(g, 2, 6)):  # segments of this stroke
            angle += _uniform(g, -math.pi / 2, math.pi / 2)
            length = _uniform(g, 0.15, 0.4) * size
            y1 = min(max(y + math.sin(angle) * length, 0.0), h - 1.0)
            x1 = min(max(x + math.cos(angle) * length, 0.0), w - 1.0)
            # the whole segment as a capsule (distance to the segment <= radius) in one go ...
            vy, vx = y1 - y, x1 - x
            t = (((yy - y) * vy + (xx - x) * vx) / max(vy * vy + vx * vx, 1e-9)).clamp(0, 1)
            new = m | ((yy - y - t * vy) ** 2 + (xx - x - t * vx) ** 2 <= radius * radius)
            n_new = int(new.sum())
            if n_new <= target:
                m, covered, y, x = new, n_new, y1, x1
                continue
            # ... except the last one, stamped disc by disc until the target is reached
            steps = max(1, math.ceil(math.hypot(vy, vx) / max(0.5, radius / 2)))
            for k in range(1, steps + 1):
                cy, cx = y + vy * k / steps, x + vx * k / steps
                m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius
                covered = int(m.sum())
                if covered >= target:
                    return m
            y, x = y1, x1
    return m


def make_mask(kind: str, h: int, w: int, fraction: float, g: torch.Generator) -> torch.Tensor:
    if kind == "center":
        return center_mask(h, w, fraction)
    if kind == "boxes":
        return boxes_mask(h, w, fraction, g)
    return strokes_mask(h, w, fraction, g)
