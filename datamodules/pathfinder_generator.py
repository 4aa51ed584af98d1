"""Pathfinder images (Linsley et al., NeurIPS 2018; LRA's Pathfinder and Path-X), our own generator: each image
a pure function of (data_seed, split, index), made in vectorised numpy batches, so nothing large is stored.

A path is a chain of short dashes with gaps between them; each dash turns from the last by an angle of density
cos^2(continuity * turn), restricted to the turns where the dash fits (the original's continuity weighting of
the free places). Paths keep `clearance` pixels between centre lines (a path also from its own earlier dashes),
as the original's dilated occupancy mask does; a path that gets stuck starts again. Two discs sit on the ends
of paths of `contour_length` dashes: the same path (label 1) or two different paths (label 0); shorter
distractor paths fill the room left. Sizes per resolution follow LRA's generation settings (GEOMETRY).

The label must not show in simple statistics, so every attempt grows both scenes of one disc pair (u, v):
    positive   path A from u to v, and a free path B;
    negative   path C from u and path D from v, which take A's first and last `shared` dashes and then go on
               on courses of their own (A is not drawn), so that next to its discs a negative looks as a
               positive does: the direction a path leaves a disc in does not tell where the other disc is;
then the distractors in each scene, each kept only where it fits in both. An attempt counts when all four
long paths could be completed, so which attempts count, where the discs are and how many dashes are drawn do
not depend on the label, which only picks the scene drawn.

Randomness is counter-based (splitmix64 of data_seed, split, index, attempt, path, restart, draw), so an image
does not depend on the batch it is made in; an image is its first attempt that counts. Labels come in pairs
(2k, 2k + 1) of opposite labels in a random order: exactly balanced over every even prefix.

    from datamodules.pathfinder_generator import generate
    out = generate(range(8), "train", data_seed=0, resolution=32)   # out.images (8, 32, 32) uint8, out.labels
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

VERSION = 2  # bump whenever the image made for a (data_seed, split, index) changes
SPLITS = ("train", "val", "test")
START_CANDIDATES = 24  # (place, direction) pairs tried for the first dash of a free path
RESTARTS = 8  # a stuck long path starts again this many times before its attempt is given up
DISTRACTOR_RESTARTS = 3  # and a stuck distractor this many times before it is left out
TAG = 64  # `last` holds tag * TAG + step + 1; a path has fewer than TAG dashes
SUBPIXEL = 4  # keep-away zones are tabulated for dash centres on a 1/4-pixel grid
ROUNDING = 0.5  # zones reach this much farther, as a point is checked on the cell it rounds to
MAX_ATTEMPTS = 256  # far beyond need: most attempts count
TAIL_ATTEMPTS = 8  # attempts of each image made at once when few images are left
CELLS_PER_ROUND = 2**24  # grid cells of the scenes grown at once (int32 each: 64 MiB)


@dataclass(frozen=True)
class Geometry:
    """One resolution's sizes, in pixels. LRA's settings (lra_benchmarks/data/pathfinder.py, after
    drewlinsley/pathfinder's snakes2): paddle_length -> dash, 2 x paddle_margin -> gap, paddle_thickness -> width
    (ours at least 1 px, so a dash shows without the original's contrast boost), about 2 x margin + thickness ->
    clearance, marker_radius -> disc_radius; distractors of contour_length // 3 = 4 dashes, at most as many as
    their configs' Python 2 integer divisions give (20, 22, 35, 30 // 4). Directions come in `angles` steps,
    about as fine as the original's pixel-rounded circle of next positions."""

    size: int
    dash: float
    gap: float
    width: float
    clearance: float
    disc_radius: float
    continuity: float
    distractors: int
    angles: int
    padding: float = 1.0
    contour_length: int = 14
    distractor_length: int = 4
    shared: int = 2  # dashes next to each disc that a negative's two paths take from the positive's path

    @property
    def disc_clearance(self) -> float:
        """Least distance from a disc's centre to another path's centre line: the paths' clearance, and at
        least a pixel between the disc's edge and the other path's ink."""
        return max(self.clearance, self.disc_radius + self.width / 2 + 1)

    @property
    def slots(self) -> int:
        """Dashes in a scene: two long paths and the distractors."""
        return 2 * self.contour_length + self.distractors * self.distractor_length


# 128 px: LRA draws the margin from {2, 3} per image; one gap of 5 (their mean) keeps every step alike
GEOMETRY: Dict[int, Geometry] = {
    32: Geometry(32, dash=2.0, gap=2.0, width=1.0, clearance=2.5, disc_radius=1.5, continuity=1.0, distractors=5,
                 angles=32),
    64: Geometry(64, dash=5.0, gap=2.0, width=1.0, clearance=3.0, disc_radius=2.5, continuity=1.8, distractors=5,
                 angles=64),
    128: Geometry(128, dash=5.0, gap=5.0, width=1.5, clearance=6.5, disc_radius=3.0, continuity=1.8, distractors=8,
                  angles=64),
    256: Geometry(256, dash=5.0, gap=6.0, width=2.0, clearance=8.0, disc_radius=5.0, continuity=1.8, distractors=7,
                  angles=64),
}


@dataclass
class Generated:
    images: np.ndarray  # (B, size, size) uint8, row-major (y, x)
    labels: np.ndarray  # (B,) int64: 1 = the discs are on the same path
    discs: np.ndarray  # (B, 2, 2) float32: the two disc centres as (x, y)
    dashes: np.ndarray  # (B,) int64: dashes drawn
    attempts: np.ndarray  # (B,) int64: the attempt each image was made from


# ------------------------------------------------------------------------------------------ counter RNG
_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def mix64(x) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scrambles neighbouring inputs."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrapping is the point; numpy reports it for 0-d arrays
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def fold(*parts) -> np.ndarray:
    """A uint64 key per element from non-negative integers or integer arrays (broadcast), folded in order."""
    k = np.asarray(np.uint64(0x5DEECE66D))
    for p in parts:
        with np.errstate(over="ignore"):
            k = mix64(k + np.asarray(p, dtype=np.int64).astype(np.uint64) * _GOLDEN)
    return k


def uniform(keys: np.ndarray, draw: int, n: int) -> np.ndarray:
    """(len(keys), n) float32 in [0, 1): draw number `draw` of each key's stream."""
    counters = (np.uint64(draw) << np.uint64(16)) + np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = mix64(keys[:, None] + counters[None, :] * _GOLDEN)
    return (bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


def split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return SPLITS.index(split)


def labels_for(indices, data_seed: int, split: str) -> np.ndarray:
    """1 or 0 per index: indices 2k and 2k + 1 get opposite labels, which one gets 1 drawn per pair."""
    indices = np.asarray(indices, dtype=np.int64)
    flip = (fold(VERSION, data_seed, split_id(split), 1, indices // 2) >> np.uint64(63)).astype(np.int64)
    return (indices % 2) ^ flip


# ------------------------------------------------------------------------------------------ geometry tables
COUNT, ZONE, LAST = 0xFF, 0xFF00, 16  # a cell's state: count | zone << 8 | last << 16
WALL = 0x7F  # the count of a cell outside the image's padding: never free
def _segment_distance(points: np.ndarray, centre: np.ndarray, direction: np.ndarray, half) -> np.ndarray:
    """Distance from points (..., O, 2) to the segments centre +- half * direction ((..., 2) each)."""
    q = points.astype(np.float32) - centre[..., None, :]
    along = q[..., 0] * direction[..., None, 0] + q[..., 1] * direction[..., None, 1]
    across = q[..., 0] * direction[..., None, 1] - q[..., 1] * direction[..., None, 0]
    beyond = np.maximum(np.abs(along) - half, 0)
    return np.sqrt(beyond * beyond + across * across)


def _point(centre: np.ndarray) -> np.ndarray:
    """A direction for segments of half-length 0 (points): any unit vector."""
    return np.broadcast_to(np.array([1, 0], np.float32), centre.shape)


def _window(r: int) -> np.ndarray:
    """Cell offsets (x, y) of the square of side 2r + 1."""
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return np.stack([x.ravel(), y.ravel()], -1).astype(np.int64)


def _offset_lists(near: np.ndarray, flat_window: np.ndarray) -> np.ndarray:
    """Each row's window offsets where `near`, padded by repeating its first (a repeated index in a fancy
    assignment changes nothing)."""
    longest = int(near.sum(-1).max())
    order = np.argsort(~near, -1, kind="stable")[..., :longest]
    order = np.where(np.take_along_axis(near, order, -1), order, np.argmax(near, -1)[..., None])
    return flat_window[order].astype(np.int32)


class Tables:
    """What every step of a geometry looks up: directions, turns and their weights, the moves from one dash
    centre to the next, the probes ahead, and the keep-away zones of a dash (per direction and sub-pixel place)
    and of a disc as flat offsets into the padded occupancy grid."""

    def __init__(self, g: Geometry):
        a = g.angles
        theta = 2 * math.pi * np.arange(a) / a
        self.unit = np.stack([np.cos(theta), np.sin(theta)], -1).astype(np.float32)  # (A, 2)
        self.half = (g.dash / 2 * self.unit).astype(np.float32)  # (A, 2): a dash's centre to its far end
        # turns strictly inside the support of cos^2(continuity * turn)
        m = int(math.ceil(math.pi / (2 * g.continuity) / (2 * math.pi / a))) - 1
        turns = np.arange(-m, m + 1)
        self.turn_weight = (np.cos(g.continuity * turns * 2 * math.pi / a) ** 2).astype(np.float32)
        self.after = (np.arange(a)[:, None] + turns[None, :]) % a  # (A, T): the direction after each turn
        # the turn happens half-way across the gap, so a path is the same read from either end
        self.move = ((g.dash + g.gap) / 2 * (self.unit[:, None, :] + self.unit[self.after])).astype(np.float32)
        # a dash's points: its ends and middle; probes: the next dash's centre after no turn and after half the
        # widest turn either way. Relative to a dash centre (A, 3, 2), and to the last one for each turn
        # (A, T, 3, 2), and for a first dash, to the disc it starts on (A, 3, 2)
        reach = int(math.ceil(max(g.dash / 2 + g.clearance, g.disc_clearance) + ROUNDING)) + 1
        # the grid reaches past the image for stamps, and for probes one step past a dash that pokes out
        self.pad = max(reach, int(math.ceil(2 * (g.dash + g.gap) + g.dash))) + 2
        self.width = g.size + 2 * self.pad
        self.cells = self.width * self.width
        frac = (np.arange(SUBPIXEL) + 0.5) / SUBPIXEL
        fx, fy = np.meshgrid(frac, frac, indexing="ij")
        places = np.stack([fx.ravel(), fy.ravel()], -1).astype(np.float32)  # (Q * Q, 2)
        # the cells a candidate dash is checked on, its ends and middle, and its probes (the next dash's centre
        # after no turn and after half the widest turn either way): flat offsets from the cell of the last
        # dash's centre (Q * Q, A, T, 3), or of the disc or place a first dash starts from (Q * Q, A, 3), per
        # sub-pixel place of that point
        points = np.stack([-self.half, self.half, 0 * self.half], 1)  # (A, 3, 2)
        probes = self.move[:, np.searchsorted(turns, [-(m // 2), 0, m // 2])]

        def cells_of(rel):
            shape = (len(places),) + (1,) * (rel.ndim - 1) + (2,)
            o = np.floor(places.reshape(shape) + rel[None]).astype(np.int32)
            return o[..., 1] * self.width + o[..., 0]

        self.next_cells = cells_of(self.move[:, :, None, :] + points[self.after])
        self.next_probe_cells = cells_of(self.move[:, :, None, :] + probes[self.after])
        self.first_cells = cells_of(self.half[:, None, :] + points)
        self.first_probe_cells = cells_of(self.half[:, None, :] + probes)
        window = _window(reach)
        flat = window[:, 1] * self.width + window[:, 0]
        half_turn = a // 2  # a dash is the same turned by pi
        near = _segment_distance(window[None, None], np.repeat(places[:, None], half_turn, 1),
                                 np.repeat(self.unit[None, :half_turn], len(places), 0), g.dash / 2) <= g.clearance + ROUNDING
        self.dash_zone = _offset_lists(near, flat)  # (Q * Q, A / 2, M)
        near = _segment_distance(window[None], places, _point(places), 0) <= g.disc_clearance + ROUNDING
        self.disc_zone = _offset_lists(near, flat)  # (Q * Q, M)
        # an empty scene: the cells outside [padding, size - 1 - padding] are walls (their count never 0)
        inside = np.zeros((self.width, self.width), bool)
        lo, hi = self.pad + int(math.ceil(g.padding)), self.pad + int(math.floor(g.size - 1 - g.padding))
        inside[lo : hi + 1, lo : hi + 1] = True
        self.empty = np.where(inside.ravel(), 0, WALL).astype(np.int32)

    def cell(self, p: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(padded-grid cell of points p (..., 2), sub-pixel bin of p within it): the frame of the cell tables."""
        s = p + np.float32(self.pad + 0.5)
        base = s.astype(np.int32)  # floor: s > 0
        q = np.minimum(((s - base) * SUBPIXEL).astype(np.int32), SUBPIXEL - 1)
        return base[..., 1] * self.width + base[..., 0], q[..., 0] * SUBPIXEL + q[..., 1]

    def place(self, centre: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(padded-grid cell of floor(centre), sub-pixel bin) for centres (..., 2) inside the padded grid."""
        p = centre + np.float32(self.pad)
        base = p.astype(np.int32)  # floor: p > 0
        q = np.minimum(((p - base) * SUBPIXEL).astype(np.int32), SUBPIXEL - 1)
        return base[..., 1] * self.width + base[..., 0], q[..., 0] * SUBPIXEL + q[..., 1]


_TABLES: Dict[Geometry, Tables] = {}


def tables(g: Geometry) -> Tables:
    if g not in _TABLES:
        _TABLES[g] = Tables(g)
    return _TABLES[g]


# ------------------------------------------------------------------------------------------ scenes


class Scenes:
    """2N scenes grown together: row i < N is item i's positive scene, row N + i its negative one, each a
    padded grid of cells (flat), one int32 state per cell:

    count  how many dashes have the cell within `clearance` of their centre line;
    last   tag * TAG + step + 1 of the latest of them;
    zone   the tag of the path whose disc is within disc_clearance of the cell (0xFF: another disc, or two).

    Dash `step` of path `tag` may use a cell that no dash covers, or that only its own previous dash covers, so
    a path goes on from its last dash but keeps away from everything else, its own earlier dashes included; only
    a path's first two dashes may enter its own disc's zone."""

    def __init__(self, g: Geometry, keys: np.ndarray):
        self.g, self.t, self.n, self.keys = g, tables(g), len(keys), keys
        rows = 2 * self.n
        self.state = np.tile(self.t.empty, rows)
        self.ok = np.ones(self.n, bool)
        self.centre = np.zeros((rows, g.slots, 2), np.float32)
        self.angle = np.zeros((rows, g.slots), np.int64)  # direction bins
        self.drawn = np.ones((rows, g.slots), bool)  # False for the distractors left out
        self.lo, self.hi = np.float32(g.padding), np.float32(g.size - 1 - g.padding)

    def free(self, rows: np.ndarray, pts: np.ndarray, tag: int, step: int) -> np.ndarray:
        """Whether the points pts (W, ..., 2) of rows (W,) are free for dash `step` of path `tag`."""
        t = self.t
        ij = (pts + np.float32(t.pad + 0.5)).astype(np.int32)  # rounded: inside the padded grid, so > 0
        at = (rows * t.cells).astype(np.int32).reshape((-1,) + (1,) * (pts.ndim - 2)) + ij[..., 1] * t.width
        return self.free_at(at + ij[..., 0], tag, step)

    def free_at(self, at: np.ndarray, tag: int, step: int) -> np.ndarray:
        """Whether the cells `at` (flat) are free for dash `step` of path `tag`."""
        st = self.state[at]
        own = 1 | (tag * TAG + step) << LAST
        free = (st == 0) | (st == own)
        if step <= 1:
            mine = (tag & 0xFF) << 8
            free |= (st == mine) | (st == (own | mine))
        return free

    def _dash_cells(self, rows: np.ndarray, centre: np.ndarray, angle: np.ndarray) -> np.ndarray:
        base, q = self.t.place(centre)
        return (rows * self.t.cells + base)[:, None] + self.t.dash_zone[q, angle % (self.g.angles // 2)]

    def stamp(self, rows: np.ndarray, centre: np.ndarray, angle: np.ndarray, value: int) -> None:
        at = self._dash_cells(rows, centre, angle)
        # a zone list repeats its first cell as padding: the repeated write stores the same value
        self.state[at] = ((self.state[at] + 1) & (COUNT | ZONE)) | (value << LAST)

    def mark(self, rows: np.ndarray, centre: np.ndarray, angle: np.ndarray, value: int) -> None:
        """Set `last` on a dash's cells without counting it again: a path going on from a kept dash after the
        dashes beyond it were erased."""
        at = self._dash_cells(rows, centre, angle)
        self.state[at] = (self.state[at] & (COUNT | ZONE)) | (value << LAST)

    def erase(self, rows: np.ndarray, slots: range) -> None:
        """Undo the stamps of the dashes in `slots` of `rows` (a path that starts again). The cells' `last`
        becomes 0, which no path may go on from: at worst a path later avoids a cell it could have used."""
        for j in slots:
            at = self._dash_cells(rows, self.centre[rows, j], self.angle[rows, j])
            self.state[at] = (self.state[at] - 1) & (COUNT | ZONE)

    def disc(self, rows: np.ndarray, centre: np.ndarray, owner: int) -> None:
        """A disc's keep-away zone; the path tagged `owner` starts on it (0xFF: no path does)."""
        base, q = self.t.place(centre)
        at = (rows * self.t.cells + base)[:, None] + self.t.disc_zone[q]
        st = self.state[at]
        zone = np.where(st & ZONE, ZONE, owner << 8)
        self.state[at] = (st & ~ZONE) | zone

    def clear(self, rows: np.ndarray) -> None:
        self.state.reshape(-1, self.t.cells)[rows] = self.t.empty


class Paths:
    """One path per row of `scenes` (path `tag`, dashes in slots slot0 ...), grown a dash at a time (`step`) in
    lockstep with other Paths objects. Each dash's direction is drawn from the turn law over the turns whose
    dash is free, preferring those with room for the next dash; a row with no free turn has `failed`, stays
    where it is and is grown again by `again` with a fresh stream."""

    def __init__(self, scenes: Scenes, rows: np.ndarray, tag: int, slot0: int, start: Optional[np.ndarray] = None,
                 restart: int = 0, first: int = 0, centre: Optional[np.ndarray] = None,
                 angle: Optional[np.ndarray] = None):
        self.sc, self.rows, self.items, self.tag, self.slot0 = scenes, rows, rows % scenes.n, tag, slot0
        self.start = start  # (W, 2) where the first dash must begin (a disc), or None for a free place
        self.restart = restart
        self.keys = fold(scenes.keys[self.items], rows >= scenes.n, tag, restart)  # each path its own stream
        self.failed = np.zeros(len(rows), bool)
        # a path whose dashes 0 .. first - 1 are already stamped goes on from the last of them
        self.first, self.centre0, self.angle0 = first, centre, angle
        self.centre, self.angle = centre, angle

    def again(self, which: np.ndarray) -> "Paths":
        """Rows `which` from their first dash to grow, with the next stream."""
        def pick(a):
            return None if a is None else a[which]

        return Paths(self.sc, self.rows[which], self.tag, self.slot0, pick(self.start), self.restart + 1,
                     self.first, pick(self.centre0), pick(self.angle0))

    def step(self, k: int) -> None:
        sc, t = self.sc, self.sc.t
        w = np.arange(len(self.rows))
        row = (self.rows * t.cells).astype(np.int32)
        if k == 0 and self.start is None:  # a free place: the first free one of random (place, direction) pairs
            u = uniform(self.keys, 0, 3 * START_CANDIDATES).reshape(-1, 3, START_CANDIDATES)
            angle = np.minimum((u[:, 2] * sc.g.angles).astype(np.int64), sc.g.angles - 1)
            origin = np.stack([sc.lo + u[:, 0] * (sc.hi - sc.lo), sc.lo + u[:, 1] * (sc.hi - sc.lo)], -1)
            base, q = t.cell(origin)
            at = (row[:, None] + base)[..., None]
            points, probes, weight = t.first_cells[q, angle], t.first_probe_cells[q, angle], None
            move = t.half[angle]
        elif k == 0:  # from a disc: any direction
            origin = self.start[:, None, :]
            base, q = t.cell(self.start)
            angle = np.broadcast_to(np.arange(sc.g.angles), (len(w), sc.g.angles))
            at = (row + base)[:, None, None]
            points, probes, weight = t.first_cells[q], t.first_probe_cells[q], np.ones(sc.g.angles, np.float32)
            move = t.half[None]
        else:
            origin = self.centre[:, None, :]
            base, q = t.cell(self.centre)
            angle = t.after[self.angle]
            at = (row + base)[:, None, None]
            points, probes, weight = t.next_cells[q, self.angle], t.next_probe_cells[q, self.angle], t.turn_weight
            move = t.move[self.angle]
        fits = sc.free_at(at + points, self.tag, k)  # (W, K, 3): walls, other paths, discs
        valid = fits[..., 0] & fits[..., 1] & fits[..., 2]
        room = sc.free_at(at + probes, self.tag, k + 1)
        ahead = valid & (room[..., 0] | room[..., 1] | room[..., 2])
        valid = np.where(ahead.any(1, keepdims=True), ahead, valid)  # no room ahead anywhere: any dash that fits
        if weight is None:
            pick = np.argmax(valid, 1)
            found = valid[w, pick]
        else:
            cum = np.cumsum(valid * weight, 1)
            pick = np.argmax(cum > uniform(self.keys, k + 1, 1) * cum[:, -1:], 1)
            found = cum[:, -1] > 0
        centre, angle = origin[w, pick % origin.shape[1]] + move[w % move.shape[0], pick], angle[w, pick]
        if k > 0:  # a stuck row stays on its last dash, so that its stamps stay inside the grid
            centre = np.where(found[:, None], centre, self.centre)
            angle = np.where(found, angle, self.angle)
        self.failed |= ~found
        self.centre, self.angle = centre, angle
        sc.stamp(self.rows, centre, angle, self.tag * TAG + k + 1)
        sc.centre[self.rows, self.slot0 + k] = centre
        sc.angle[self.rows, self.slot0 + k] = angle

    def end(self) -> np.ndarray:
        """The outer end of the last dash."""
        return self.centre + self.sc.t.half[self.angle]


def grow(paths: List[Paths], length: int, restarts: int = RESTARTS) -> np.ndarray:
    """Grow `paths` (a dash of each in turn) to `length` dashes; the rows where one got stuck are erased and
    grown again, up to `restarts` times, the other paths staying as they are. Returns the rows that never
    completed (erased)."""
    for _ in range(restarts + 1):
        for k in range(paths[0].first, length):
            for p in paths:
                p.step(k)
        again = []
        for p in paths:
            stuck = np.nonzero(p.failed)[0]
            if len(stuck):
                p.sc.erase(p.rows[stuck], range(p.slot0 + p.first, p.slot0 + length))
                p = p.again(stuck)
                if p.first:  # the kept dash the path goes on from is its own previous one again
                    p.sc.mark(p.rows, p.centre0, p.angle0, p.tag * TAG + p.first)
                again.append(p)
        paths = again
        if not paths:
            return np.zeros(0, np.int64)
    return np.concatenate([p.rows for p in paths])


def grow_scenes(g: Geometry, keys: np.ndarray) -> Tuple[np.ndarray, Scenes, np.ndarray, np.ndarray]:
    """Both scenes of each attempt key. Returns the attempts that count (`live`, indices into keys), the scenes
    (row i positive, row N + i negative) and the discs u, v (len(live), 2) of the attempts that count."""
    sc = Scenes(g, keys)
    n, L = sc.n, g.contour_length
    pos, neg = np.arange(n), np.arange(n) + n
    # A from disc u (a new u with each restart) to v, whose disc must keep disc_clearance from A's other dashes
    # and from u: checked at v and, where dash zones fall short of that, on a ring around it
    spread = max(g.disc_clearance - g.clearance, 0)
    ring = np.linspace(0, 2 * math.pi, 9)[:-1]
    ring = np.concatenate([[[0, 0]], spread * np.stack([np.cos(ring), np.sin(ring)], -1)]).astype(np.float32)
    u, v = np.zeros((n, 2), np.float32), np.zeros((n, 2), np.float32)
    rows = pos
    for restart in range(RESTARTS + 1):
        u[rows] = sc.lo + uniform(fold(keys[rows], restart), 0, 2) * (sc.hi - sc.lo)
        sc.disc(rows, u[rows], owner=1)
        a = Paths(sc, rows, 1, 0, start=u[rows], restart=restart)
        for k in range(L):
            a.step(k)
        v[rows] = a.end()
        around = v[rows, None, :] + ring[None]
        inside = ((around >= 0) & (around <= g.size - 1)).all(-1)
        a.failed |= ~(sc.free(rows, around, tag=1, step=L) | ~inside).all(1)  # step L: past A's last dash
        stuck = np.nonzero(a.failed)[0]
        if not len(stuck):
            break
        rows = rows[stuck]
        sc.clear(rows)  # A and u's zone are all there is yet
    else:
        sc.ok[rows] = False
    sc.disc(pos, v, owner=ZONE >> 8)
    # B free in the positive scene; later work only on the attempts that still count
    live = np.nonzero(sc.ok)[0]
    sc.ok[grow([Paths(sc, live, 2, L)], L)] = False
    live = np.nonzero(sc.ok)[0]
    # negative: C takes A's first `shared` dashes from u, D A's last ones from v (turned round), so that near
    # each disc a negative looks as a positive does; then both go on, a dash each in turn, on new courses
    m, half_turn = g.shared, g.angles // 2
    neg = live + n
    sc.disc(neg, u[live], owner=1)
    sc.disc(neg, v[live], owner=2)
    for k in range(m):
        for tag, slot, turn in ((1, k, 0), (2, L - 1 - k, half_turn)):
            centre, angle = sc.centre[live, slot], (sc.angle[live, slot] + turn) % g.angles
            sc.stamp(neg, centre, angle, tag * TAG + k + 1)
            sc.centre[neg, (tag - 1) * L + k], sc.angle[neg, (tag - 1) * L + k] = centre, angle
    c = Paths(sc, neg, 1, 0, start=u[live], first=m, centre=sc.centre[neg, m - 1], angle=sc.angle[neg, m - 1])
    d = Paths(sc, neg, 2, L, start=v[live], first=m, centre=sc.centre[neg, L + m - 1],
              angle=sc.angle[neg, L + m - 1])
    sc.ok[grow([c, d], L) - n] = False
    live = np.nonzero(sc.ok)[0]
    # distractors where there is room; one left out of either scene is left out of both
    both, dl = np.concatenate([live, live + n]), g.distractor_length
    for j in range(g.distractors):
        slots = range(2 * L + j * dl, 2 * L + (j + 1) * dl)
        stuck = grow([Paths(sc, both, 3 + j, slots.start)], dl, DISTRACTOR_RESTARTS)
        items = np.unique(stuck % n)
        sc.erase(np.setdiff1d(np.concatenate([items, items + n]), stuck), slots)
        sc.drawn[np.concatenate([items, items + n])[:, None], np.asarray(slots)[None]] = False
    return live, sc, u[live], v[live]


# ------------------------------------------------------------------------------------------ drawing
def render(g: Geometry, centre: np.ndarray, angle: np.ndarray, drawn: np.ndarray, discs: np.ndarray,
           antialias: bool = True) -> np.ndarray:
    """uint8 (B, size, size): the dashes drawn (centre (B, n, 2), angle bins (B, n), drawn (B, n)) and the
    discs (B, 2, 2) at full intensity, anti-aliased by a one-pixel ramp of the distance to the centre line (a
    box filter's coverage, nearly)."""
    b, s = len(centre), g.size
    img = np.zeros(b * s * s + 1, np.float32)  # + 1: where marks outside the image go
    unit, rows = tables(g).unit, np.arange(b) * (s * s)

    def draw(c, direction, half, radius, keep):
        """One mark per image (so no cell repeats within a call): the brighter of it and what is there."""
        reach = half + radius + 0.5  # no ink farther than this from the centre, along either axis
        window = _window(int(math.ceil(reach)) + 1)
        window = window[(np.abs(window) <= reach + 1).all(-1)]
        cells = np.floor(c).astype(np.int64)[:, None, :] + window[None]
        dist = _segment_distance(cells, c, direction, half)
        ink = np.clip(radius + np.float32(0.5) - dist, 0, 1) if antialias else (dist <= radius).astype(np.float32)
        ink *= keep[:, None]
        at = np.where(((cells >= 0) & (cells < s)).all(-1), rows[:, None] + cells[..., 1] * s + cells[..., 0], b * s * s)
        img[at] = np.maximum(img[at], ink)

    for j in range(centre.shape[1]):
        draw(centre[:, j], unit[angle[:, j]], np.float32(g.dash / 2), np.float32(g.width / 2), drawn[:, j])
    for j in range(2):
        d = discs[:, j].astype(np.float32)
        draw(d, _point(d), np.float32(0), np.float32(g.disc_radius), np.ones(b, np.float32))
    return np.rint(img[:-1] * 255).astype(np.uint8).reshape(b, s, s)


def generate(indices: Iterable[int], split: str, data_seed: int = 0, resolution: int = 32,
             antialias: bool = True, geometry: Optional[Geometry] = None) -> Generated:
    """The images of `indices` in `split`: a pure function of (data_seed, split, index) and the geometry."""
    g = geometry or GEOMETRY[resolution]
    idx = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), dtype=np.int64).ravel()
    labels = labels_for(idx, data_seed, split)
    sid = split_id(split)
    centre = np.zeros((len(idx), g.slots, 2), np.float32)
    angle = np.zeros((len(idx), g.slots), np.int64)
    drawn = np.zeros((len(idx), g.slots), bool)
    discs = np.zeros((len(idx), 2, 2), np.float32)
    attempts = np.zeros(len(idx), np.int64)  # each image's next attempt, then the one it was made from
    pending = np.arange(len(idx))
    per_round = max(1, CELLS_PER_ROUND // (2 * tables(g).cells))
    while len(pending):
        # a few images left: several attempts of each at once, so the last ones cost one round, not several
        tries = max(1, min(TAIL_ATTEMPTS, per_round // 4 // len(pending)))
        todo = pending[: per_round // tries]
        if attempts[todo].max() + tries > MAX_ATTEMPTS:
            raise RuntimeError(f"no Pathfinder image could be completed in {MAX_ATTEMPTS} attempts for index "
                               f"{int(idx[todo[np.argmax(attempts[todo])]])}: the geometry leaves too little room")
        who = np.repeat(todo, tries)
        tried = attempts[who] + np.tile(np.arange(tries), len(todo))
        made, sc, u, v = grow_scenes(g, fold(VERSION, data_seed, sid, 0, idx[who], tried))
        first = np.unique(who[made], return_index=True)[1]  # made is sorted: each image's first attempt made
        made, u, v = made[first], u[first], v[first]
        i = who[made]
        row = made + np.where(labels[i] == 1, 0, sc.n)  # the label picks the scene
        centre[i], angle[i], drawn[i] = sc.centre[row], sc.angle[row], sc.drawn[row]
        discs[i, 0], discs[i, 1], attempts[i] = u, v, tried[made]
        failed = np.setdiff1d(todo, i)
        attempts[failed] += tries
        pending = np.concatenate([failed, pending[len(todo):]])
    images = render(g, centre, angle, drawn, discs, antialias)
    return Generated(images=images, labels=labels, discs=discs, dashes=drawn.sum(1), attempts=attempts)
