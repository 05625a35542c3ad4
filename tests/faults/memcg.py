"""A cgroup v1 memory cgroup of a test's own: a limit, a wrapper that joins it before exec, and its counters.

The worker is started as `sh -c 'echo $$ > <cgroup>/cgroup.procs && exec "$@"' <cgroup> python -m worker run`:
it is in the cgroup from its first instruction (the model load, the fork of `--processes` children), keeps the
shell's PID, and every child it forks is charged there too. The cgroup has no swap to fall back on
(memory.memsw.limit_in_bytes = the limit where swap accounting exists), so going over the limit means reclaim,
then the OOM killer: `oom_kill` (memory.oom_control) counts its kills, `failcnt` the times usage hit the limit.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path("/sys/fs/cgroup/memory")


def available() -> str | None:
    """None where a child cgroup can be made here, else why not."""
    if not (ROOT / "cgroup.procs").exists():
        return f"no cgroup v1 memory controller at {ROOT}"
    probe = ROOT / f"embedstream-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
    except OSError as e:
        return f"cannot create a memory cgroup under {ROOT}: {e}"
    probe.rmdir()
    return None


def require() -> None:
    """Skip where the cgroup fs is not writable; under CI=true that is a failure, not a skip."""
    why = available()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"memory limit tests need a writable cgroup v1 memory controller (root): {why}", pytrace=False)
    pytest.skip(why)


class MemCgroup:
    def __init__(self, limit_bytes: int, name: str = "embedstream-test") -> None:
        self.path = ROOT / f"{name}-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()
        self.limit = limit_bytes
        self._write("memory.limit_in_bytes", limit_bytes)
        if (self.path / "memory.memsw.limit_in_bytes").exists():
            self._write("memory.memsw.limit_in_bytes", limit_bytes)

    def _write(self, name: str, value: int | str) -> None:
        (self.path / name).write_text(str(value))

    def read(self, name: str) -> int:
        return int((self.path / name).read_text().split()[0])

    def prefix(self) -> list[str]:
        """Put in front of a command: it joins this cgroup, then execs the command (same PID)."""
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.path)]

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    @property
    def usage(self) -> int:
        return self.read("memory.usage_in_bytes")

    @property
    def peak(self) -> int:
        return self.read("memory.max_usage_in_bytes")

    @property
    def failcnt(self) -> int:
        return self.read("memory.failcnt")

    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def stat(self) -> dict[str, int]:
        out = {}
        for line in (self.path / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            out[key] = int(value)
        return out

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone (the caller stops them); the charges of what is left in
        the page cache move to the parent."""
        deadline = time.monotonic() + 15
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def cold_copy(folder: Path, into: Path) -> Path:
    """A copy of a model folder whose pages are not in the page cache: the worker's first reads of the table are
    charged to its cgroup, as in a pod that starts on a node where no one else read that file (the original,
    read by other runs, would be charged to whoever read it first)."""
    into.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file():
            target = into / f.name
            shutil.copyfile(f, target)
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return into
