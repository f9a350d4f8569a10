"""The hyperoctahedral group B_n (coordinate permutations and bit flips, order n! 2^n) acting on classes.

A class on n <= 6 points is one 64-bit word (bit c set for each concept c), so a group element is a
permutation of the 2^n bit positions. Instead of 2^n-entry lookup tables we apply the group's generators
as *delta swaps* on whole numpy arrays of words: a coordinate transposition (i k) swaps the bits at the
points with x_i = 1, x_k = 0 with those s = 2^k - 2^i higher up, and a flip of x_j swaps blocks of 2^j
bits. Building S_n as the union of cosets (i k) S_k, then doubling by each flip, gives all n! 2^n images
of a batch of classes in 2 n + n(n-1)/2 vectorised steps.

The canonical form of a class is the least image word. ``canonical_slow`` computes the same thing from
explicit point maps and exists to test the fast path.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from math import factorial

import numpy as np

MAX_N = 6  # 2^6 = 64 points: one uint64 per class


def group_order(n: int) -> int:
    return factorial(n) * (1 << n)


@lru_cache(maxsize=None)
def _transposition(n: int, i: int, k: int) -> tuple[np.uint64, np.uint64]:
    """(mask of the lower points of the swap, shift) for the coordinate transposition (i k), i < k."""
    low = 0
    for p in range(1 << n):
        if p >> i & 1 and not p >> k & 1:
            low |= 1 << p
    return np.uint64(low), np.uint64((1 << k) - (1 << i))


@lru_cache(maxsize=None)
def _flip(n: int, j: int) -> tuple[np.uint64, np.uint64]:
    """(mask of the points with x_j = 0, shift 2^j) for flipping coordinate j."""
    zero = 0
    for p in range(1 << n):
        if not p >> j & 1:
            zero |= 1 << p
    return np.uint64(zero), np.uint64(1 << j)


def _apply_transposition(x: np.ndarray, n: int, i: int, k: int) -> np.ndarray:
    low, s = _transposition(n, i, k)
    t = ((x >> s) ^ x) & low
    return x ^ t ^ (t << s)


def _apply_flip(x: np.ndarray, n: int, j: int) -> np.ndarray:
    zero, s = _flip(n, j)
    return ((x & zero) << s) | ((x >> s) & zero)


def group_images(masks: np.ndarray, n: int) -> np.ndarray:
    """All images of each class under B_n: shape (len(masks), n! 2^n), column 0 is the identity."""
    if n > MAX_N:
        raise ValueError(f"the vectorised group action needs n <= {MAX_N}, got n = {n}")
    x = np.asarray(masks, dtype=np.uint64).reshape(-1, 1)
    for k in range(1, n):
        # S_{k+1} = union over i <= k of (i k) S_k, with (k k) the identity coset.
        x = np.concatenate([x] + [_apply_transposition(x, n, i, k) for i in range(k)], axis=1)
    for j in range(n):
        x = np.concatenate([x, _apply_flip(x, n, j)], axis=1)
    return x


def canonical_forms(masks, n: int, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(least image word, stabiliser order) of each class; orbit size = group_order(n) // stabiliser."""
    masks = np.asarray(masks, dtype=np.uint64).reshape(-1)
    order = group_order(n)
    batch = batch or max(1, (4 << 20) // order)  # about 32 MB of images at a time
    canon = np.empty(masks.size, dtype=np.uint64)
    stab = np.empty(masks.size, dtype=np.int64)
    for start in range(0, masks.size, batch):
        chunk = masks[start:start + batch]
        imgs = group_images(chunk, n)
        canon[start:start + batch] = imgs.min(axis=1)
        stab[start:start + batch] = (imgs == chunk[:, None]).sum(axis=1)
    return canon, stab


def canonical(mask: int, n: int) -> int:
    return int(canonical_forms([mask], n)[0][0])


# --- reference implementation (explicit point maps) -------------------------------------------------
def point_maps(n: int) -> list[list[int]]:
    """Each element of B_n as the map p -> image point, for every p in 0..2^n-1."""
    maps = []
    for perm in itertools.permutations(range(n)):
        for flip in range(1 << n):
            m = []
            for p in range(1 << n):
                q = 0
                for i in range(n):
                    if p >> i & 1:
                        q |= 1 << perm[i]
                m.append(q ^ flip)
            maps.append(m)
    return maps


def apply_point_map(mask: int, pmap: list[int]) -> int:
    out, p = 0, 0
    while mask:
        if mask & 1:
            out |= 1 << pmap[p]
        mask >>= 1
        p += 1
    return out


def canonical_slow(mask: int, n: int) -> tuple[int, int]:
    """(least image, stabiliser order) by applying every element of B_n explicitly."""
    imgs = [apply_point_map(mask, m) for m in point_maps(n)]
    return min(imgs), sum(1 for im in imgs if im == mask)


def random_group_element(n: int, rng: np.random.Generator) -> list[int]:
    """A uniformly random element of B_n as a point map."""
    perm = rng.permutation(n)
    flip = int(rng.integers(0, 1 << n))
    out = []
    for p in range(1 << n):
        q = 0
        for i in range(n):
            if p >> i & 1:
                q |= 1 << int(perm[i])
        out.append(q ^ flip)
    return out
