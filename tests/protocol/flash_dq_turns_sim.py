#!/usr/bin/env python3
"""A model of the grad_q turn protocol of flash_attn_bwd_dkdv_kernel (templates/flash_attention.cuh)
with several key blocks, padded and packed: blocks of a head take tickets in start order
(atomicAdd on the head's word), a ticket becomes a key block (ascending, causal descending) or,
past a packed sequence's key blocks, an early return; each key block visits its query tiles in
order and adds its part of each tile's grad_q once the tile's counter says the previous parts are
in (turn_wait), passing the turn on when it starts its next tile or ends (turn_pass). Blocks run as
coroutines under random interleavings with at most `resident` blocks on the GPU at once, over
heads of random lengths.

Checked: no deadlock; every tile's parts arrive in rank order 0 .. parts - 1, the last one writes
grad_q, and every query tile of a sequence is written exactly once (by its last part, or zeroed
by key block 0 where no key block visits it: causal). The formulas mirror flash_attention.sig.cuh
(flash_dq_turn, flash_bwd_m_begin). Broken variants (--broken) must be caught:
  mixed-count  packed places handed out over the grid's key blocks, the parts counted over the
               sequence's (counting both over the grid is correct, only wasteful: the extra key
               blocks add zeros)
  pass-early   the turn passed before the part is written
  causal-up    causal places ascending (a part waits on a block that may not have started)
Exit status 0 when the protocol holds (and, with --broken, when the variant is caught)."""
import argparse
import random
import sys

BLOCK_N = 64  # kFlashBwdBlockNSmall: keys per key block with several


def ceil_div(a, b):
    return -(-a // b)


def dq_turn(causal, j, blocks, m, km, q_len, k_len):
    if not causal:
        return j, blocks
    reach = m + km + k_len - q_len
    n = 0 if reach <= 0 else ceil_div(reach, BLOCK_N)
    parts = min(n, blocks)
    return parts - 1 - j, parts


def m_begin(causal, n0, km, q_len, k_len):
    first = n0 - (k_len - q_len)
    return first // km * km if causal and first > 0 else 0


class Head:
    def __init__(self, qn, kn, grid, packed):
        self.qn, self.kn = qn, kn
        self.blocks = grid if not packed else max(1, ceil_div(kn, BLOCK_N))
        self.ticket = 0
        self.counter = {}
        self.parts_seen = {}  # tile -> ranks in arrival order
        self.written = {}  # tile -> times grad_q rows were written (or zeroed)


def block(head, causal, km, grid, broken, log):
    """One block's actions, yielding at every point another block may run between."""
    i = head.ticket
    head.ticket += 1
    yield
    blocks = head.blocks
    places = grid if broken == "mixed-count" else blocks
    if i >= places:
        return  # a place past the sequence's key blocks: the whole block returns
    place = (places - 1 - i) if causal and broken != "causal-up" else i
    n0 = place * BLOCK_N
    mb = m_begin(causal, n0, km, head.qn, head.kn)
    if causal and n0 == 0:  # key block 0 zeros the rows of the tiles no block visits
        for t in range(ceil_div(min(mb, head.qn), km)):
            head.written[t] = head.written.get(t, 0) + 1
    pass_to, tile = 0, mb // km
    m0 = mb
    while m0 < head.qn:
        if pass_to > 0:
            head.counter[tile - 1] = pass_to
        yield
        rank, parts = dq_turn(causal, place, blocks, m0, km, head.qn, head.kn)
        if rank < 0 or rank >= parts:
            log.append(f"tile {tile}: rank {rank} of {parts} parts (place {place})")
            return
        pass_to = rank + 1 if rank + 1 < parts else 0
        while head.counter.get(tile, 0) < rank:  # turn_wait
            yield "wait"
        if broken == "pass-early" and pass_to > 0:
            head.counter[tile] = pass_to
            yield
        head.parts_seen.setdefault(tile, []).append(rank)
        if rank == parts - 1:
            head.written[tile] = head.written.get(tile, 0) + 1
        yield
        m0 += km
        tile += 1
    if pass_to > 0:
        head.counter[tile - 1] = pass_to


def trial(rng, broken):
    causal = rng.random() < 0.5
    packed = rng.random() < 0.7 or broken == "mixed-count"
    km = rng.choice([32, 64])
    k_len = rng.randint(BLOCK_N * 2 + 1, 700)  # several key blocks (k_len > 128)
    q_len = rng.randint(1, 700)
    grid = ceil_div(k_len, BLOCK_N)
    heads = []
    for _ in range(rng.randint(1, 4)):
        if packed:
            heads.append(Head(rng.randint(0, q_len), rng.choice([0, 1, 63, 64, 65, rng.randint(0, k_len)]),
                              grid, True))
        else:
            heads.append(Head(q_len, k_len, grid, False))
    log = []
    pending = [(h, block(h, causal, km, grid, broken, log)) for h in heads for _ in range(grid)]
    rng.shuffle(pending)  # start order: any
    resident = []
    capacity = rng.randint(1, grid + 2)
    while pending or resident:
        while pending and len(resident) < capacity:
            resident.append(pending.pop())
        progressed = False
        for idx in rng.sample(range(len(resident)), len(resident)):
            h, co = resident[idx]
            try:
                r = next(co)
            except StopIteration:
                resident.pop(idx)
                progressed = True
                break
            if r != "wait":
                progressed = True
                break
        if not progressed:
            return f"deadlock ({len(resident)} resident blocks all waiting, {len(pending)} not started)"
        if log:
            return log[0]
    for hi, h in enumerate(heads):
        for tile, ranks in h.parts_seen.items():
            if ranks != list(range(len(ranks))):
                return f"head {hi} tile {tile}: parts in order {ranks}"
        for tile in range(ceil_div(h.qn, km)):
            if h.written.get(tile, 0) != 1:
                return f"head {hi} (qn {h.qn}, kn {h.kn}) tile {tile} written {h.written.get(tile, 0)} times"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--broken", choices=["mixed-count", "pass-early", "causal-up"])
    args = ap.parse_args()
    rng = random.Random(args.seed)
    failures = []
    for _ in range(args.trials):
        why = trial(rng, args.broken)
        if why:
            failures.append(why)
    if args.broken:
        print(f"{args.broken}: caught in {len(failures)} of {args.trials} trials"
              + (f" (e.g. {failures[0]})" if failures else ""))
        return 0 if failures else 1
    print(f"{args.trials} trials: " + ("the protocol holds" if not failures else f"{len(failures)} failed: {failures[0]}"))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
