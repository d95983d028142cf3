"""Regenerate the console output blocks of README.md from real runs.

Each block sits between `<!-- output: ARGS -->` and `<!-- /output -->` and holds what `ltsearch ARGS`
printed (100 columns wide, the run directory shown as outputs/runs/<run>). Run after changing what a
command prints, or the quickstart's defaults:

    python scripts/readme_output.py            # every block (the quickstart: about a minute on 2 CPU cores)
    python scripts/readme_output.py --check    # exit 1 if a block's command no longer runs
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- output: (?P<args>.*?) -->\n```\n)(?P<body>.*?)(```\n<!-- /output -->)", re.S)


def run(args: str, work: Path) -> str:
    """`ltsearch ARGS` in a fresh folder; its stdout with the run folder replaced by a readable name."""
    run_dir = work / "run"
    env = {**os.environ, "COLUMNS": "100", "LTSEARCH_CACHE": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "ltsearch", *shlex.split(args)]
    if command[3:4] == ["run"]:
        command.append(f"hydra.run.dir={run_dir}")
    proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"ltsearch {args} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.replace(str(run_dir), "outputs/runs/<run>")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="run the commands, leave README.md as it is")
    args = parser.parse_args()
    readme = REPO / "README.md"
    text = readme.read_text()

    def replace(match: re.Match[str]) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"ltsearch {match['args']}", flush=True)
            output = run(match["args"], Path(tmp))
        return match.group(1) + "\n".join(line.rstrip() for line in output.strip().splitlines()) + "\n" + match.group(4)

    new = BLOCK.sub(replace, text)
    if not args.check:
        readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
