"""Start-up time of `harmon --help` and of `harmon <command> --help` for every command (median of 5 runs each),
and which heavy libraries each one imports (none should: commands import what they need when they run); print
a table and write JSON.

    python -m experiments.benchmarks.cli_startup [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harmon.utils.files import write_json

HEAVY = ("torch", "diffusers", "transformers", "timm", "accelerate", "matplotlib", "sklearn", "scipy")

# Runs `harmon ARGS` in-process, then prints the heavy modules that got imported (stdout is the help text).
PROBE = """
import json, sys
from experiments.cli import app
try:
    app(sys.argv[1:], prog_name="harmon")
except SystemExit as stop:
    code = stop.code or 0
else:
    code = 0
heavy = sorted(name for name in {heavy!r} if name in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


def commands() -> list[str]:
    """The command names of the `harmon` app (importing it is cheap)."""
    import typer

    from experiments.cli import app

    return sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def run_help(args: list[str], python: str = sys.executable) -> tuple[float, int, list[str], str]:
    """Seconds, exit code, heavy modules imported and the help text of one `harmon ARGS` start."""
    root = Path(__file__).resolve().parents[2]
    start = time.perf_counter()
    done = subprocess.run([python, "-c", PROBE.format(heavy=HEAVY), *args], cwd=root, capture_output=True,
                          text=True, timeout=120)
    seconds = time.perf_counter() - start
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return seconds, report["code"], report["heavy"], done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs per command; the median is reported")
    parser.add_argument("--commands", help="comma list of commands to time (default: all; `harmon --help` always)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/cli_startup.json"), help="JSON output path")
    args = parser.parse_args()
    chosen = args.commands.split(",") if args.commands else commands()
    rows = []
    for command in [None, *chosen]:
        argv = ["--help"] if command is None else [command, "--help"]
        runs = [run_help(argv) for _ in range(args.repeats)]
        rows.append({"command": " ".join(["harmon", *argv]), "median_s": statistics.median(r[0] for r in runs),
                     "runs_s": [r[0] for r in runs], "exit_codes": sorted({r[1] for r in runs}),
                     "heavy_imports": runs[0][2]})
    width = max(len(row["command"]) for row in rows)
    print(f"{'command':<{width}}  median s  heavy imports")
    for row in rows:
        print(f"{row['command']:<{width}}  {row['median_s']:8.2f}  {', '.join(row['heavy_imports']) or '-'}")
    report = {"repeats": args.repeats, "heavy": list(HEAVY), "rows": rows}
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
