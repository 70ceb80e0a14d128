"""Median CUDA-event timing shared by the PyTorch baselines in tools/bench."""
import torch


def median_ms(fn, reps=20, warmup=3):
    """Median milliseconds of fn() over `reps` runs after `warmup` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]
