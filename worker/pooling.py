"""Sum each text's token rows of the embedding table, at the speed memory delivers them.

The encoder's mean is "sum the rows (times the token weights), divide once by the count". Two ways do the sum,
in the same order of float32 operations, so their results are bit-identical:

* **compiled** (`numba`, optional: `pip install embedstream[fast]`): one pass over the batch's ids; each token's
  row is read from the memory-mapped table in its stored dtype, converted to float32 in registers (float16
  through its bits, since numba has no float16 type) and added to the text's accumulator with SIMD. No float32
  copy of any row, no per-batch temporary beyond one row; the GIL is released while it runs.
* **sparse** (scipy, always available): a (texts x distinct rows) CSR matrix times the distinct rows converted
  to float32; scipy's product is a scalar loop, and numpy converts float16 one element at a time.

The kernel compiles (~1 s per table dtype) on first use; `Pooler.compile_later()` does it on a background thread
after start-up, and until it is done the sparse product runs. Where a writable cache directory exists
(`NUMBA_CACHE_DIR`, else numba's own choice) the compiled code is kept for the next start.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

PoolingChoice = Literal["auto", "compiled", "sparse"]
CHOICES: tuple[str, ...] = ("auto", "compiled", "sparse")

_import_lock = threading.Lock()


def _load_kernel() -> Any:
    """The numba kernel (imported once per process; compiled per table dtype and layout on first call)."""
    with _import_lock:
        from worker.pooling_kernels import sum_rows

        return sum_rows


def compiled_available(*, import_it: bool = True) -> str:
    """"" when the compiled kernel can run here, else why not.

    `import_it=False` only looks for the package (importing numba costs ~0.25 s of start-up); a broken
    install then shows when the background compile fails, and the sparse product keeps serving.
    """
    if not import_it:
        return "" if importlib.util.find_spec("numba") else "numba is not installed (pip install embedstream[fast])"
    try:
        import numba  # noqa: F401
    except ImportError:
        return "numba is not installed (pip install embedstream[fast])"
    except Exception as e:  # a broken llvmlite install must not stop the worker
        return f"numba does not import ({type(e).__name__}: {e})"
    return ""


class Pooler:
    """Sums and means of token rows over one table (the stored dtype, a column slice allowed)."""

    def __init__(self, table: np.ndarray, weights: np.ndarray | None, mapping: np.ndarray | None,
                 choice: str = "auto") -> None:
        if choice not in CHOICES:
            raise ValueError(f"pooling must be one of {', '.join(CHOICES)}, not {choice!r}")
        self.table = table
        self.dim = int(table.shape[1])
        self.weights = weights
        self.mapping = mapping
        self._direct = table.dtype == np.float32 and table.flags.c_contiguous
        self._where = np.zeros(0 if self._direct else table.shape[0], dtype=np.int64)  # scratch, per row
        self._kernel: Any = None  # set once compiled
        self._kernel_args: tuple[Any, ...] = ()
        self.choice = choice
        why = "" if choice != "sparse" else "set by EMBED_MODEL__POOLING"
        if not why:
            why = compiled_available(import_it=choice == "compiled")
            if why and choice == "compiled":
                raise ValueError(f"EMBED_MODEL__POOLING=compiled but {why}")
        self.status = "sparse" if why else "sparse until the compiled kernel is ready"
        self._why_not = why
        self._thread: threading.Thread | None = None

    # --- the compiled kernel -----------------------------------------------------------------------------

    @property
    def wants_compiled(self) -> bool:
        return not self._why_not

    def compile_now(self) -> float:
        """Compile (or load from numba's cache) the kernel for this table; returns the seconds it took."""
        if not self.wants_compiled or self._kernel is not None:
            return 0.0
        t0 = time.perf_counter()
        kernel = _load_kernel()
        table = self.table.view(np.uint16) if self.table.dtype == np.float16 else self.table
        # one tiny call compiles exactly the specialization this table needs (dtype, layout)
        probe = np.zeros((1, self.dim), np.float32)
        kernel(table, np.zeros(1, np.int64), np.ones(1, np.float32), np.ones(1, np.int64), False, probe)
        self._kernel_args = (kernel, table)
        self._kernel = kernel
        seconds = time.perf_counter() - t0
        self.status = "compiled"
        log.info("pooling kernel ready", extra={"dtype": str(self.table.dtype), "seconds": round(seconds, 3)})
        return seconds

    def compile_later(self) -> None:
        """Compile on a background thread; the sparse product serves until it is done."""
        if not self.wants_compiled or self._kernel is not None or self._thread is not None:
            return

        def run() -> None:
            try:
                self.compile_now()
            except Exception as e:  # the sparse product keeps serving: slower, same vectors
                self._why_not = f"kernel failed to compile ({type(e).__name__}: {e})"
                self.status = f"sparse: {self._why_not}"
                log.warning("pooling kernel unavailable, the sparse product serves", exc_info=True)

        self._thread = threading.Thread(target=run, name="pooling-compile", daemon=True)
        self._thread.start()

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait for a background compile (tests, benchmarks); whether the kernel is ready."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._kernel is not None

    # --- pooling -----------------------------------------------------------------------------------------

    def sums(self, flat: np.ndarray, counts: np.ndarray, *, sparse: bool = False) -> np.ndarray:
        """float32 [n, dim]: each text's sum of (weight x) token rows, in token order."""
        n = counts.shape[0]
        if flat.size == 0:
            return np.zeros((n, self.dim), dtype=np.float32)
        rows = flat if self.mapping is None else self.mapping[flat]
        if self._kernel is not None and not sparse:
            kernel, table = self._kernel_args
            weighted = self.weights is not None
            data = self.weights[flat] if weighted else np.ones(1, np.float32)  # type: ignore[index]
            out = np.empty((n, self.dim), np.float32)
            kernel(table, np.ascontiguousarray(rows, dtype=np.int64), data,
                   np.ascontiguousarray(counts, dtype=np.int64), weighted, out)
            return out
        return self._sparse_sums(rows, flat, counts)

    def _sparse_sums(self, rows: np.ndarray, flat: np.ndarray, counts: np.ndarray) -> np.ndarray:
        n = counts.shape[0]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        data = np.ones(flat.size, dtype=np.float32) if self.weights is None else self.weights[flat]
        if self._direct:
            m = sp.csr_matrix((data, rows, indptr), shape=(n, self.table.shape[0]))
            out = m @ self.table
        else:
            # float16/int8 (or a column slice): convert each distinct row of the batch once, not every token's
            distinct, columns = self._distinct(rows)
            gathered = self.table[distinct].astype(np.float32)
            m = sp.csr_matrix((data, columns, indptr), shape=(n, distinct.size))
            out = m @ gathered
        return np.ascontiguousarray(out, dtype=np.float32)

    def _distinct(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The distinct rows of a batch (ascending) and each token's position among them."""
        if rows.size * 8 < self.table.shape[0]:  # few tokens: sorting them beats a pass over the vocabulary
            return np.unique(rows, return_inverse=True)
        seen = np.bincount(rows, minlength=self.table.shape[0])
        distinct = np.flatnonzero(seen)
        where = self._where
        where[distinct] = np.arange(distinct.size, dtype=np.int64)
        return distinct, where[rows]

    def means(self, flat: np.ndarray, counts: np.ndarray, *, sparse: bool = False) -> np.ndarray:
        """float32 [n, dim]: each text's mean token row (sum first, divide once: model2vec's order)."""
        out = self.sums(flat, counts, sparse=sparse)
        out /= np.maximum(counts, 1).astype(np.float32)[:, None]
        return out
