"""A model of flash::fwd_ring's slot protocol (templates/flash_attention.cuh), run under random
interleavings: warps as coroutines, mbarriers with try_wait.parity's semantics (a wait for parity p
returns once the barrier's phase count has parity != p), cp.async copies landing at random later
times, wgmma reads in flight until their wait. It checks what the kernel's comment argues: no
deadlock; a warp reads a tile only after every warp's copies of it landed, and from the slot that
holds it; a slot is overwritten only after every read of its previous tile completed; each warp
multiplies tiles 0..N-1 in order. A design check of the protocol, not of the CUDA code: keep it in
step with fwd_ring when that changes.

    python3 tests/protocol/flash_fwd_ring_sim.py [--trials N] [--seed S]

Also runs deliberately broken variants (publishing a tile before its copies landed or before the
previous tile's p·v finished reading its slot; off-by-one phase parities) and fails unless each
of them is caught: the model can fail."""
import argparse
import random
import sys


class Bar:
    def __init__(self, count):
        self.count, self.arrived, self.phases = count, 0, 0

    def arrive(self):
        self.arrived += 1
        if self.arrived == self.count:
            self.arrived, self.phases = 0, self.phases + 1

    def done(self, parity):
        return (self.phases & 1) != parity


def run(W, S, A, N, rng, bug=None):
    """W warps, S slots, A tiles published ahead (2: sm_90a's overlapped loop, 1: mma.sync), N
    tiles. Returns the list of violations."""
    full = [Bar(W) for _ in range(S)]
    slot_tile = [None] * S
    landed, copies, errors = set(), [], []
    reading = {w: [] for w in range(W)}  # (slot, tile) reads in flight
    seen = {w: [] for w in range(W)}
    phase = (lambda j: ((j // S) + 1) & 1) if bug == "parity" else (lambda j: (j // S) & 1)

    def copy(w, j):
        if j >= N:
            return
        s = j % S
        if slot_tile[s] != j:
            for ww in range(W):
                for (_, t) in reading[ww]:
                    if t == slot_tile[s]:
                        errors.append(f"warp {w} overwrites tile {t} (slot {s}) read by warp {ww}")
            slot_tile[s] = j
        copies.append((w, j))

    def read(w, j):
        if slot_tile[j % S] != j:
            errors.append(f"warp {w} reads tile {j} from a slot holding {slot_tile[j % S]}")
        for ww in range(W):
            if (ww, j) not in landed:
                errors.append(f"warp {w} reads tile {j} before warp {ww}'s copy landed")
        reading[w].append((j % S, j))
        seen[w].append(j)

    def copies_landed(w, upto):  # cp.async.wait_group: this warp's copies of tiles <= upto
        return bug == "publish-unlanded" or all((w, t) in landed for t in range(min(upto + 1, N)))

    def publish(j):
        if j < N:
            full[j % S].arrive()

    def advance(w, j):  # the refill of tile j - 1's slot, then the publication of tile j + A
        copy(w, j + S - 1)
        while not copies_landed(w, j + A):
            yield
        publish(j + A)

    def warp(w):
        for j in range(S - 1):
            copy(w, j)
        yield
        while not copies_landed(w, A - 1):
            yield
        for j in range(A):
            publish(j)
        if A == 2 and N > 0:
            while not full[0].done(phase(0)):
                yield
            read(w, 0)
            reading[w].clear()  # the prologue's q·kᵀ, waited for
        for j in range(N):
            if A == 2:
                if j + 1 < N:
                    while not full[(j + 1) % S].done(phase(j + 1)):
                        yield
                    read(w, j + 1)  # q·kᵀ of tile j + 1 issued
                reading[w].append((j % S, j))  # with p·v of tile j
            else:
                while not full[j % S].done(phase(j)):
                    yield
                read(w, j)
            if bug == "publish-early":  # refill and publish before the reads complete
                yield from advance(w, j)
                yield
                reading[w].clear()
            else:
                yield
                reading[w].clear()  # wgmma.wait / the synchronous mma.sync products
                yield from advance(w, j)
            yield

    gens = {w: warp(w) for w in range(W)}
    alive, idle = set(gens), 0
    while alive:
        if copies and rng.random() < 0.3:
            landed.add(copies.pop(rng.randrange(len(copies))))
            idle = 0
            continue
        w = rng.choice(sorted(alive))
        try:
            next(gens[w])
            idle += 1
        except StopIteration:
            alive.discard(w)
            idle = 0
        if idle > 20000 and not copies:
            errors.append(f"deadlock: warps {sorted(alive)} waiting")
            break
    for w in range(W):
        want = list(range(N))
        if seen[w] != want and not errors:
            errors.append(f"warp {w} multiplied tiles {seen[w]}, want {want}")
    return errors


def sweep(trials, rng, bug=None):
    cases = bad = 0
    first = None
    for _ in range(trials):
        for W in (4, 8):
            for S, A in ((4, 2), (4, 1), (3, 1)):
                for N in (0, 1, 2, 3, 4, 5, 7, 9, 13):
                    errs = run(W, S, A, N, rng, bug)
                    cases += 1
                    if errs:
                        bad += 1
                        first = first or (W, S, A, N, errs[0])
    return cases, bad, first


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    cases, bad, first = sweep(a.trials, rng)
    print(f"the protocol: {cases} interleavings, {bad} with a violation" + (f": {first}" if first else ""))
    ok = bad == 0
    for bug in ("publish-unlanded", "publish-early", "parity"):
        cases, bad, first = sweep(max(1, a.trials // 10), rng, bug)
        print(f"broken variant '{bug}': {cases} interleavings, {bad} caught")
        ok = ok and bad > 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
