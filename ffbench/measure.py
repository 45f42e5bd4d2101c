"""Wall-clock time and peak memory of one job, reset at its start so that jobs sharing a
process (Hydra's basic launcher runs a whole sweep in one) never inherit each other's peaks."""

import resource
import sys
import time
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _vm_hwm_mb() -> float:
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise OSError("VmHWM missing from /proc/self/status")


def _ru_maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB else


class PeakMemory:
    """Context manager: peak resident memory (and peak CUDA allocation) inside the block.

    On Linux, writing 5 to /proc/self/clear_refs resets the VmHWM high-water mark. Elsewhere
    ru_maxrss is the only figure and cannot be reset; `method` says which one was used.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "vmhwm"
        self.peak_rss_mb = float("nan")
        self.peak_cuda_allocated_mb = None

    def __enter__(self):
        try:
            _CLEAR_REFS.write_text("5")
            _vm_hwm_mb()
        except OSError:
            self.method = "ru_maxrss_not_reset"
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def read(self) -> None:
        """Record the peaks so far (call before leaving the block)."""
        self.peak_rss_mb = _vm_hwm_mb() if self.method == "vmhwm" else _ru_maxrss_mb()
        if self.device.type == "cuda":
            self.peak_cuda_allocated_mb = torch.cuda.max_memory_allocated(self.device) / 2**20

    def __exit__(self, *exc):
        self.read()
        return False


class Stopwatch:
    """Accumulates the time spent inside `with stopwatch:` blocks, waiting for the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.last = time.perf_counter() - self._start
        self.seconds += self.last
        return False
