"""A broker's disk that can fill up and be freed again, for the disk-full tests (tests/faults, tests/cluster): a
size-limited tmpfs mounted for the test (root only), with the broker's log directory in `log_dir` and a filler
file beside it. `fill()` takes every free byte (the broker's next write fails with ENOSPC), `free()` deletes the
filler. A tmpfs is used rather than a loop-mounted ext4 image: no loop device, no reserved blocks, and the space
comes back at once."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

MB = 1024 * 1024


def require_root() -> None:
    """Skip (fail under CI=true) where the test cannot mount a filesystem."""
    if os.geteuid() == 0:
        return
    why = "the disk-full test mounts a size-limited tmpfs: run as root"
    if os.environ.get("CI") == "true":
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


class SmallDisk:
    """A tmpfs of `size_mb` at `mount_point`; the broker's log directory is `log_dir` inside it."""

    def __init__(self, mount_point: Path, size_mb: int) -> None:
        self.mount_point = mount_point
        self.size_mb = size_mb
        self.log_dir = mount_point / "kafka"
        self.filler = mount_point / "filler"
        self.mounted = False

    def __enter__(self) -> SmallDisk:
        self.mount_point.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755", "tmpfs",
                        str(self.mount_point)], check=True, capture_output=True, timeout=30)
        self.mounted = True
        self.log_dir.mkdir()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    def unmount(self) -> None:
        if not self.mounted:
            return
        r = subprocess.run(["umount", str(self.mount_point)], capture_output=True, timeout=30)
        if r.returncode != 0:  # still held by a process that is going away: detach it now, freed when released
            subprocess.run(["umount", "-l", str(self.mount_point)], capture_output=True, timeout=30)
        self.mounted = False

    def free_bytes(self) -> int:
        st = os.statvfs(self.mount_point)
        return st.f_bavail * st.f_frsize

    def used_bytes(self) -> int:
        st = os.statvfs(self.mount_point)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def fill(self) -> int:
        """Take every free byte with the filler file; the bytes it took."""
        taken = 0
        with open(self.filler, "ab", buffering=0) as f:
            bulk = max(0, self.free_bytes() - MB)
            if bulk:
                os.posix_fallocate(f.fileno(), 0, bulk)
                taken = bulk
            chunk = b"\0" * 4096
            while True:  # the last megabyte page by page, also what the broker wrote meanwhile
                try:
                    taken += f.write(chunk) or 0
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
        return taken

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


def wait_pid_gone(pid_file: Path, timeout: float) -> float | None:
    """Seconds until the process in `pid_file` has exited (the file gone or its pid dead); None past `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return time.monotonic() - t0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


FULL_DISK_WORDS = ("No space left", "log dir", "Shutdown broker", "failed log directory", "Stopping serving")


def broker_log_lines(server_log: Path, words: tuple[str, ...] = FULL_DISK_WORDS) -> list[str]:
    """The lines of a broker's server.log that say what it did about the full disk (no stack frames)."""
    try:
        lines = server_log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln[:300] for ln in lines if not ln.lstrip().startswith("at ") and any(w in ln for w in words)]


def worker_log_summary(log_path: Path, from_line: int = 0, top: int = 8) -> tuple[int, list[str]]:
    """What the worker logged from line `from_line` on (JSON lines): the line count and the most frequent
    (level, message, code) with their counts."""
    import json
    from collections import Counter

    try:
        lines = log_path.read_text(errors="replace").splitlines()[from_line:]
    except OSError:
        return 0, []
    kinds: Counter[str] = Counter()
    for ln in lines:
        try:
            rec = json.loads(ln)
        except ValueError:
            parts = ln.split("|", 4)  # librdkafka's own lines: %LEVEL|time|FACILITY|client| text
            kinds[f"librdkafka {parts[2]} ({parts[3]})" if len(parts) == 5 else ln[:60]] += 1
            continue
        code = rec.get("code") or str(rec.get("error", ""))[:80]
        kinds[f"{rec.get('level', '?')} {rec.get('msg', '')!r} {code}".strip()] += 1
    return len(lines), [f"{n}x {k}" for k, n in kinds.most_common(top)]


def line_count(path: Path) -> int:
    try:
        return len(path.read_text(errors="replace").splitlines())
    except OSError:
        return 0
