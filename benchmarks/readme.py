"""How long a newcomer waits for each runnable command block of the README (and docs/*.md).

    python benchmarks/readme.py                 # README.md's runnable blocks, in order
    python benchmarks/readme.py docs/*.md       # another document's
    python benchmarks/readme.py --budget 120    # exit 1 if a `lc bench` block takes longer

Runs each block whose info string is plain `bash` (see tests/test_docs.py for the convention)
as a `bash -e` script in a scratch folder holding a copy of canvases/, configs/ and benchmarks/
(`pip install` commands skipped), and prints its wall time. The README promises its quick
`lc bench` line under 2 minutes on a 2-core CPU: `--budget` (seconds) checks the blocks that
run `lc bench` against it. Speed is measured here, never in the tests.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("canvases", "configs", "benchmarks")


def runnable_blocks(doc: Path) -> list[tuple[int, str]]:
    """(line of the opening fence, text) of each plain `bash` block of a markdown file."""
    found, lines = [], doc.read_text(encoding="utf-8").splitlines()
    start = None
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if start is None:
                start = number if line.strip() == "```bash" else -number
            else:
                if start > 0:
                    found.append((start, "\n".join(lines[start : number - 1])))
                start = None
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("docs", nargs="*", type=Path, default=[REPO / "README.md"])
    parser.add_argument("--budget", type=float, default=None, help="seconds for a bench block")
    args = parser.parse_args()
    over = []
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
    }
    print(f"{'block':<28} {'seconds':>8}  first command")
    for doc in args.docs:
        with tempfile.TemporaryDirectory(prefix="lc-readme-") as scratch:
            for name in COPIED:
                shutil.copytree(REPO / name, Path(scratch) / name)
            for line, text in runnable_blocks(doc.resolve()):
                script = re.sub(r"(?m)(^|&&\s*)pip install [^&;|\n]*", r"\1true ", text)
                started = time.perf_counter()
                done = subprocess.run(
                    ["bash", "-e", "-o", "pipefail", "-c", script], cwd=scratch, env=env,
                    capture_output=True, text=True, stdin=subprocess.DEVNULL,
                )  # fmt: skip
                seconds = time.perf_counter() - started
                where = f"{doc.name}:{line}"
                first = text.strip().splitlines()[0][:60]
                status = "" if done.returncode == 0 else f"  FAILED (exit {done.returncode})"
                print(f"{where:<28} {seconds:>8.1f}  {first}{status}", flush=True)
                if done.returncode:
                    print(done.stdout[-2000:] + done.stderr[-2000:], file=sys.stderr)
                    over.append(where)
                elif args.budget and "lc bench" in text and seconds > args.budget:
                    print(f"  over the budget of {args.budget:g} s", flush=True)
                    over.append(where)
    print(f"{os.cpu_count()} CPUs (os.cpu_count); load average {os.getloadavg()[0]:.1f}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
