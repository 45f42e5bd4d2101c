"""Wall-clock time and memory of one job's training, reset at its start so that jobs sharing a
process (Hydra's basic launcher runs a whole sweep in one) never inherit each other's peaks.

Four figures, from the most exact to the most practical:
- saved activations: the bytes autograd holds for backward, counted tensor by tensor through
  `saved_tensors_hooks`; exact, deterministic and the same on every device;
- total tensor memory: every storage training holds (parameters, gradients, optimizer state,
  saved activations, the rest), counted op by op through a TorchDispatchMode, with its
  breakdown at its peak; exact at op boundaries, the same on every device;
- peak RSS: what the operating system charged the process;
- peak CUDA allocated / reserved: what torch's caching allocator handed out / held; on CUDA
  the total tensor memory of training is the allocator's peak, less what was allocated before
  training apart from the parameters (the data set on the device).
"""

import ctypes
import ctypes.util
import functools
import gc
import math
import resource
import sys
import threading
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MB = 2**20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATM = Path("/proc/self/statm")
SAMPLE_INTERVAL_S = 0.002


def _vm_hwm_mb() -> float:
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise OSError("VmHWM missing from /proc/self/status")


def _ru_maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB else


def _current_rss_mb() -> float:
    """Resident memory now, from /proc, else from psutil; raises OSError where neither can
    read it."""
    try:
        return int(_STATM.read_text().split()[1]) * resource.getpagesize() / MB
    except (OSError, IndexError, ValueError):
        pass
    try:
        import psutil  # a dependency (MLflow's system metrics); needed only without /proc
    except ImportError:
        raise OSError("no /proc/self/statm and no psutil to read the resident memory") from None
    return psutil.Process().memory_info().rss / MB


@functools.cache  # find_library runs `ldconfig -p`: once per process is enough
def _libc_function(name: str):
    """glibc's function `name`, or None where there is none."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD_MAX = 32 * MB  # glibc's largest on 64-bit systems


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for the next allocation instead of returning it to
    the OS at once. Every training step allocates and frees the same large tensors (weight
    gradients, bf16 copies of the weights); by default glibc hands blocks of a few MB back on
    free (munmap, or trimming the heap) and the next step touches fresh pages, one page fault
    per 4 kB: two fifths of a bf16 step of 4 x 2000 at batch 100 (docs/performance.md). Blocks up
    to 32 MB now come from the heap, and the heap is only trimmed explicitly (malloc_trim,
    which each job's memory meter still calls at its start). Elsewhere a no-op."""
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
        mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def _return_free_memory() -> None:
    """Give memory freed by earlier jobs back to the OS, so it does not count in this job's RSS.

    glibc keeps freed heap pages mapped; malloc_trim returns them. Elsewhere this is a no-op.
    """
    gc.collect()
    _trim()


def _trim() -> None:
    """glibc's malloc_trim: freed heap pages back to the OS (elsewhere a no-op)."""
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


def _larger(old: float | None, new: float) -> float:
    return new if old is None or math.isnan(old) else max(old, new)


class _Sampler(threading.Thread):
    """Reads the resident memory every few milliseconds and keeps the largest value."""

    def __init__(self):
        super().__init__(daemon=True, name="ffbench-rss-sampler")
        self.peak_mb = _current_rss_mb()
        self._done = threading.Event()

    def run(self):
        while not self._done.wait(SAMPLE_INTERVAL_S):
            self.peak_mb = max(self.peak_mb, _current_rss_mb())

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.peak_mb, _current_rss_mb())  # a peak at the very end counts too


class _Saved:
    """What autograd stores instead of a saved tensor: its lifetime is the tensor's time in the
    graph, so a finalizer on it says when the tensor stops being held for backward.

    It keeps a detached alias (same storage, no grad_fn): an op's own output, kept as itself,
    would make a cycle through its grad_fn that nothing collects if the graph is dropped.
    Autograd restores the autograd metadata when it unpacks.
    """

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor.detach()


class SavedTensors:
    """Context manager: live and peak bytes of the tensors autograd saves for backward.

    Each storage counts once however many graph nodes save it (or views of it), and the
    storages of `params` never count: they exist whether or not anything is trained. A storage
    stops counting when the last node that saved it lets go, i.e. when backward frees the graph
    or the graph is dropped. Tensors saved inside torch.utils.checkpoint regions are handled by
    checkpoint's own hooks, so only the inputs it keeps count, not the transient recomputation.
    """

    def __init__(self, params=()):
        self._excluded = {p.untyped_storage().data_ptr() for p in params}
        self._live: dict[int, list[int]] = {}  # storage address -> [bytes, saves alive]
        self._lock = threading.Lock()  # CUDA's backward frees graphs on its own threads
        self.live_bytes = 0
        self.peak_bytes = 0

    def _pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._excluded:
            return tensor
        saved = _Saved(tensor)
        with self._lock:
            entry = self._live.setdefault(key, [size, 0])
            if entry[1] == 0:
                self.live_bytes += size
                self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            entry[1] += 1
        weakref.finalize(saved, self._release, key)
        return saved

    def _release(self, key: int) -> None:
        with self._lock:
            entry = self._live[key]
            entry[1] -= 1
            if entry[1] == 0:
                self.live_bytes -= entry[0]
                del self._live[key]

    @staticmethod
    def _unpack(saved):
        return saved.tensor if isinstance(saved, _Saved) else saved

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False


PARTS = ("param", "grad", "optimizer_state", "saved_activations", "other")


class LiveTensors(TorchDispatchMode):
    """Context manager: live and peak bytes of all tensor memory of training, and what it held
    at its peak.

    The live total is the parameters plus every storage an op allocated inside the block that
    is still alive: each op's outputs are seen as it returns (a TorchDispatchMode sits below
    autograd and autocast, so backward's and the optimizer's ops count too), an output that
    aliases an input (a view, an in-place op) allocates nothing, and a finalizer on each new
    storage takes it off when the last tensor using it dies. Tensors made before the block
    (the data set) do not count, nor does what an op allocates and frees within itself. Each
    time the total reaches a new peak, its storages are sorted into PARTS: the parameters,
    their gradients, the optimizer's state, what `saved` (SavedTensors) holds for backward,
    and the rest (inputs, outputs and temporaries of the step)."""

    def __init__(self, params, optimizer: torch.optim.Optimizer | None, saved: "SavedTensors"):
        super().__init__()
        self.params = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in params}
        self.optimizer, self.saved = optimizer, saved
        self._live: dict[int, int] = {}  # storage address -> bytes, of those allocated here
        self._lock = threading.Lock()
        self.live_bytes = sum(self.params.values())
        self.peak_bytes = self.live_bytes
        self.at_peak = dict.fromkeys(PARTS, 0) | {"param": self.live_bytes}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        grew = False
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                grew |= self._allocated(t.untyped_storage(), inputs)
        if grew and self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            self.at_peak = self._breakdown()
        return out

    def _allocated(self, storage, inputs: set) -> bool:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in inputs or key in self._live or key in self.params:
            return False
        with self._lock:
            self._live[key] = size
            self.live_bytes += size
        weakref.finalize(storage, self._release, key)
        return True

    def _release(self, key: int) -> None:
        with self._lock:
            self.live_bytes -= self._live.pop(key)

    def _breakdown(self) -> dict[str, int]:
        """The live storages now, by PARTS (each in the first part that claims it)."""
        grads = {p.grad.untyped_storage().data_ptr() for p in self._grads()}
        state = set()
        if self.optimizer is not None:
            state = {
                v.untyped_storage().data_ptr()
                for s in self.optimizer.state.values()
                for v in s.values()
                if torch.is_tensor(v)
            }
        saved = set(self.saved._live)
        parts = dict.fromkeys(PARTS, 0) | {"param": sum(self.params.values())}
        with self._lock:
            for key, size in self._live.items():
                part = "grad" if key in grads else "optimizer_state" if key in state else None
                part = part or ("saved_activations" if key in saved else "other")
                parts[part] += size
        return parts

    def _grads(self):
        if self.optimizer is None:
            return []
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]


def _training_bytes(params, optimizer) -> int:
    """The distinct storages of `params`, their gradients and `optimizer`'s state."""
    tensors = list(params) + [p.grad for p in params if p.grad is not None]
    if optimizer is not None:
        tensors += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(
        {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values()
    )


class PeakMemory:
    """Context manager: peak saved activations, resident memory and CUDA memory in the block,
    and with `total` the total tensor memory (LiveTensors: `optimizer` says which tensors are
    its state and which parameters have gradients).

    Entering it again (once per epoch, say) keeps the largest peak of all blocks, so the
    figures cover training and nothing in between. `method` says how the resident peak was
    read: `vmhwm` (Linux: the high-water mark, reset by writing 5 to /proc/self/clear_refs),
    `sampled` (no resettable mark: a thread reads the resident memory every 2 ms, so a spike
    shorter than that can be missed) or `ru_maxrss_not_reset` (nothing to sample: the
    process's lifetime peak, an upper bound that earlier jobs may have set). On the CPU the
    resident memory training added is the peak against the resident memory just before the
    first block. On CUDA the total is the allocator's: its peak in any block, less what it had
    allocated before the first block apart from the parameters, their gradients and the
    optimizer's state (the data set; a few bytes of the CUDA context); with `total`, the count
    gives the breakdown and its own total (peak_total_counted_mb).

    The count costs a Python call per op (3x the time of a digits net, little on large ones).
    A block entered through `stage(key)` counts only if it is the first of its stage (one per
    key: the layer a sequential pass trains, None for every pass of a simultaneous run), unless
    `every_pass`: every later pass of a stage repeats the first's allocations (the same
    shapes; the optimizer's state made in its first step), so its peak is the first's
    (tests/unit/test_total_memory.py checks it to the byte). A block entered directly counts.
    """

    def __init__(
        self,
        device: torch.device,
        params=(),
        optimizer=None,
        total: bool = False,
        every_pass: bool = True,
    ):
        _return_free_memory()
        self.device = device
        params = list(params)
        self.saved = SavedTensors(params)
        self.tensors = LiveTensors(params, optimizer, self.saved) if total else None
        self.every_pass = every_pass
        self._stages: set = set()  # the stages whose first pass was counted
        self._counting = True  # whether the next block counts (stage() says)
        self.method = None
        self.rss_before_mb = None
        self.peak_rss_mb = float("nan")
        self.peak_cuda_allocated_mb = None
        self.peak_cuda_reserved_mb = None
        self.params, self.optimizer = params, optimizer
        self.cuda_before = None  # bytes allocated before the first block, not training's own
        self.peak_cuda_total_bytes = None
        self._sampler = None

    def _reset_rss(self) -> str:
        try:
            _CLEAR_REFS.write_text("5")
            _vm_hwm_mb()
            return "vmhwm"
        except OSError:
            pass
        try:
            self._sampler = _Sampler()
        except OSError:
            return "ru_maxrss_not_reset"
        self._sampler.start()
        return "sampled"

    def __enter__(self):
        # What evaluation freed since the last block stays resident (keep_freed_memory) and
        # would count as this block's: FF's evaluation alone added 110 MB to the paper's net's
        # training peak (docs/memory.md).
        _trim()
        if self.rss_before_mb is None and self.device.type == "cpu":
            try:
                self.rss_before_mb = _current_rss_mb()
            except OSError:  # nothing to read it from: no figure of what training added
                self.rss_before_mb = math.nan
        self.method = self._reset_rss()
        if self.device.type == "cuda":
            if self.cuda_before is None:
                allocated = torch.cuda.memory_stats(self.device)["allocated_bytes.all.current"]
                self.cuda_before = allocated - _training_bytes(self.params, self.optimizer)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.saved.__enter__()
        if self.tensors is not None and self._counting:
            self.tensors.__enter__()
        return self

    def stage(self, key) -> "PeakMemory":
        """Self, to enter for a pass of stage `key`: the count runs in it if it is the stage's
        first pass (or with every_pass)."""
        self._counting = self.every_pass or key not in self._stages
        self._stages.add(key)
        return self

    def read(self) -> None:
        """Fold the peaks of the block now ending into the figures."""
        if self.method == "vmhwm":
            rss = _vm_hwm_mb()
        elif self.method == "sampled":
            rss = self._sampler.stop()
            self._sampler = None
        else:
            rss = _ru_maxrss_mb()
        self.peak_rss_mb = _larger(self.peak_rss_mb, rss)
        if self.device.type == "cuda":
            stats = torch.cuda.memory_stats(self.device)
            allocated = stats["allocated_bytes.all.peak"]  # = torch.cuda.max_memory_allocated
            reserved = stats["reserved_bytes.all.peak"] / MB
            self.peak_cuda_allocated_mb = _larger(self.peak_cuda_allocated_mb, allocated / MB)
            self.peak_cuda_reserved_mb = _larger(self.peak_cuda_reserved_mb, reserved)
            total = allocated - self.cuda_before
            self.peak_cuda_total_bytes = max(self.peak_cuda_total_bytes or 0, total)

    def __exit__(self, *exc):
        if self.tensors is not None and self._counting:
            self.tensors.__exit__(*exc)
        self._counting = True
        self.saved.__exit__(*exc)
        self.read()
        return False

    def metrics(self) -> dict[str, float]:
        """The figures as MLflow metrics (MB = 2**20 bytes); CUDA ones only on CUDA."""
        found = {
            "peak_saved_activations_mb": self.saved.peak_bytes / MB,
            "peak_rss_mb": self.peak_rss_mb,
            "peak_cuda_allocated_mb": self.peak_cuda_allocated_mb,
            "peak_cuda_reserved_mb": self.peak_cuda_reserved_mb,
        }
        if self.tensors is not None:
            found["peak_total_mb"] = self.tensors.peak_bytes / MB
            found |= {f"peak_total_{k}_mb": v / MB for k, v in self.tensors.at_peak.items()}
        if self.peak_cuda_total_bytes is not None:  # the allocator's figure wins on CUDA
            if self.tensors is not None:
                found["peak_total_counted_mb"] = found["peak_total_mb"]
            found["peak_total_mb"] = self.peak_cuda_total_bytes / MB
        if self.rss_before_mb is not None and not math.isnan(self.rss_before_mb):
            found["rss_added_mb"] = self.peak_rss_mb - self.rss_before_mb
        return {k: v for k, v in found.items() if v is not None}


def tensors_mb(tensors) -> float:
    """Size of the distinct storages behind `tensors`, in MB."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values()) / MB


def static_memory_mb(optimizer: torch.optim.Optimizer) -> dict:
    """What training holds whatever the batch: every trained parameter (FF's read-out too)
    and the optimizer's state."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {"param_mb": tensors_mb(params), "optimizer_state_mb": tensors_mb(state)}


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


def matmul_gflops(shapes, device: torch.device, seconds: float, dtype=torch.float32) -> float:
    """The best GFLOP/s plain matmuls (m, k) @ (k, n) of `shapes`, run in turn, achieve on
    `device` in `dtype` within about `seconds`: the rate the matrix unit gives those products,
    the denominator of every "ratio to matmul". The best of several rounds, so that a moment
    of load from elsewhere does not count against the training it is compared with."""
    pairs = [
        (torch.rand(m, k, device=device, dtype=dtype), torch.rand(k, n, device=device, dtype=dtype))
        for m, k, n in shapes
    ]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    stopwatch = Stopwatch(device)
    with stopwatch:  # warm-up, and the time of one round
        for a, b in pairs:
            a @ b
    best, deadline = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        with stopwatch:
            for a, b in pairs:
                a @ b
        best = min(best, stopwatch.last)
    return flops / best / 1e9
