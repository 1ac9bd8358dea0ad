"""On a GPU machine: what one small copy costs in a process right after another process (another
CUDA context on the same GPU) has done the same, as two transport workers on one GPU ping-pong
(the two-process latency of `bench transport`). Each variant runs in both processes, alternating
turns through a pipe; only the copy and its synchronization are timed, in process A.
Usage: python3 small_copy_probe.py [ROUNDS]"""
import multiprocessing as mp
import statistics
import sys
import time

SIZES = (8, 1024, 16384, 32768, 65536)
PAD = 65536


def variants(cp, n):
    rt = cp.cuda.runtime
    s = cp.cuda.Stream(non_blocking=True)
    dev = cp.cuda.alloc(max(n, PAD))
    scratch = cp.cuda.alloc(PAD)
    pinned = cp.cuda.alloc_pinned_memory(PAD)
    import numpy as np
    pageable = np.zeros(PAD, dtype=np.uint8)
    H2D, D2H, D2D = rt.memcpyHostToDevice, rt.memcpyDeviceToHost, rt.memcpyDeviceToDevice

    def op(f):
        def run():
            f()
            s.synchronize()
        return run
    return {
        "d2h pinned": op(lambda: rt.memcpyAsync(pinned.ptr, dev.ptr, n, D2H, s.ptr)),
        "h2d pinned": op(lambda: rt.memcpyAsync(dev.ptr, pinned.ptr, n, H2D, s.ptr)),
        "d2h pageable": op(lambda: rt.memcpyAsync(pageable.ctypes.data, dev.ptr, n, D2H, s.ptr)),
        "h2d pageable": op(lambda: rt.memcpyAsync(dev.ptr, pageable.ctypes.data, n, H2D, s.ptr)),
        "d2h pinned padded to 64K": op(lambda: rt.memcpyAsync(pinned.ptr, dev.ptr, PAD, D2H, s.ptr)),
        "h2d pinned 64K to scratch + d2d n": op(lambda: (rt.memcpyAsync(scratch.ptr, pinned.ptr, PAD, H2D, s.ptr),
                                                          rt.memcpyAsync(dev.ptr, scratch.ptr, n, D2D, s.ptr))),
        "d2d": op(lambda: rt.memcpyAsync(scratch.ptr, dev.ptr, n, D2D, s.ptr)),
    }


def worker(conn, timed, rounds):
    import cupy as cp
    cp.cuda.Device(0).use()
    results = {}
    for n in SIZES:
        for name, run in variants(cp, n).items():
            times = []
            for _ in range(rounds):
                if not timed:
                    conn.recv()  # A's turn first, then B's
                t = time.perf_counter()
                run()
                times.append(time.perf_counter() - t)
                conn.send(1)
                if timed:
                    conn.recv()
            results[(name, n)] = statistics.median(times) * 1e6
    if timed:
        names = list(dict.fromkeys(k[0] for k in results))
        print(f"{'variant (median us of the copy + sync, in turn with another context)':<44}" + "".join(f"{n:>9}" for n in SIZES))
        for name in names:
            print(f"{name:<44}" + "".join(f"{results[(name, n)]:>9.1f}" for n in SIZES), flush=True)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    # A goes first in each round; B answers: the two contexts take turns on the GPU.
    pa = ctx.Process(target=worker, args=(a, True, rounds))
    pb = ctx.Process(target=worker, args=(b, False, rounds))
    pa.start()
    pb.start()
    pa.join(600)
    pb.join(60)
    # Alone: the same copies with no other context taking turns.
    solo = ctx.Process(target=alone, args=(rounds,))
    solo.start()
    solo.join(300)


def alone(rounds):
    import cupy as cp
    print("\nalone (no other context):")
    for n in (8, 16384, 32768):
        row = []
        for name, run in variants(cp, n).items():
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                run()
                times.append(time.perf_counter() - t)
            row.append(f"{name} {statistics.median(times) * 1e6:.1f}")
        print(f"  {n:>6} B: " + "; ".join(row), flush=True)


if __name__ == "__main__":
    main()
