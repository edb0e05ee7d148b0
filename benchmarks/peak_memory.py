"""Peak memory above the level at entry, for the benchmarks: `with peak_memory(device) as mem: ...; mem.extra_mb`."""

from __future__ import annotations

import ctypes
import os
import threading
import time

import torch


class PeakRss:
    """Peak resident memory, sampled every millisecond from /proc/self/statm (after malloc_trim, so memory
    freed before entry does not hide growth)."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        try:
            self.trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:
            self.trim = lambda _: None

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.trim(0)
        self.base = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.rss())
        self.extra_mb = (self.peak - self.base) / 2**20


class PeakCuda:
    """Peak CUDA memory allocated."""

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.extra_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20


def peak_memory(device: str | torch.device) -> PeakRss | PeakCuda:
    """The allocator's peak on CUDA, resident memory elsewhere."""
    return PeakCuda() if torch.device(device).type == "cuda" else PeakRss()
