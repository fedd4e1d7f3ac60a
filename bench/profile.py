"""Where a server spends its CPU under load: py-spy samples, summarised by file:line.

``run.py --profile`` runs one extra, unmeasured pass per Warden scenario with py-spy
attached (sampling costs CPU on a 2-core machine, so it never overlaps a measurement)
and appends the top frames to the report. Also usable on its own::

    python -m bench.profile /tmp/warden-bench-*/profile-warden-plain-c32.txt

py-spy's raw output has one line per distinct stack: ``frame;frame;...;leaf COUNT``,
each frame ``function (file:line)``. Idle time (the event loop waiting) is not sampled,
so the shares below are shares of the CPU the server used.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

Stack = tuple[tuple[str, ...], int]


def available() -> bool:
    return shutil.which("py-spy") is not None


def record(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds``; wait on the returned process."""
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", str(rate), "--nonblocking", "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def parse(text: str) -> list[Stack]:
    stacks = []
    for line in text.splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((tuple(frames.split(";")), int(count)))
    return stacks


def top_self(stacks: Sequence[Stack], n: int) -> list[tuple[str, int]]:
    """Leaf frames: the lines the CPU was actually executing."""
    c: Counter[str] = Counter()
    for frames, count in stacks:
        c[frames[-1]] += count
    return c.most_common(n)


def top_inclusive(stacks: Sequence[Stack], n: int, marker: str) -> list[tuple[str, int]]:
    """Frames whose file contains ``marker`` (e.g. ``proxy/``), counted with everything
    they called: which line of our own code led to the work."""
    c: Counter[str] = Counter()
    for frames, count in stacks:
        for frame in set(frames):
            if marker in frame:
                c[frame] += count
    return c.most_common(n)


def top_attributed(stacks: Sequence[Stack], n: int, marker: str) -> list[tuple[str, int]]:
    """Each sample charged to the deepest frame matching ``marker``: the line of our own
    code that the CPU was working for, library time included, nothing counted twice."""
    c: Counter[str] = Counter()
    for frames, count in stacks:
        owner = next((f for f in reversed(frames) if marker in f), "(outside " + marker + ")")
        c[owner] += count
    return c.most_common(n)


def summary(path: Path, n: int = 12, marker: str = "proxy/") -> str:
    stacks = parse(path.read_text(errors="replace"))
    total = sum(count for _, count in stacks)
    if not total:
        return f"(no samples in {path.name})"
    lines = [f"{total} samples. Self (leaf) time:", ""]
    lines += [f"    {count / total:6.1%}  {frame}" for frame, count in top_self(stacks, n)]
    lines += ["", f"Charged to the deepest frame in `{marker}` (library time included):", ""]
    lines += [f"    {count / total:6.1%}  {frame}"
              for frame, count in top_attributed(stacks, n, marker)]
    lines += ["", f"Inclusive time of frames in `{marker}`:", ""]
    lines += [f"    {count / total:6.1%}  {frame}"
              for frame, count in top_inclusive(stacks, n, marker)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Summarise a py-spy raw profile.")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("-n", type=int, default=15)
    p.add_argument("--marker", default="proxy/", help="inclusive view for frames matching")
    a = p.parse_args(argv)
    for f in a.files:
        print(f"## {f.name}\n\n{summary(f, a.n, a.marker)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
