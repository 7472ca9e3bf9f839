"""Command line: ``python -m mmlib list | run NAME --seed S --out DIR | build [NN ...] | ...``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _cmd_list(args: argparse.Namespace) -> int:
    from mmlib.experiments import list_experiments

    experiments = list_experiments()
    if not experiments:
        print("no experiments registered")
        return 0
    width = max(len(e.name) for e in experiments)
    for e in experiments:
        print(f"{e.name:<{width}}  {e.description}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from mmlib.experiments import run_experiment

    result = run_experiment(args.name, seed=args.seed, out=args.out, device=args.device)
    print(json.dumps(result.metrics, indent=2, sort_keys=True))
    if args.out:
        print(f"wrote {args.out}/metrics.json and {args.out}/arrays.npz ({len(result.arrays)} arrays)")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from mmlib.course import build_notebooks

    build_notebooks(args.notebooks, execute=not args.no_execute)
    return 0


def _cmd_student(args: argparse.Namespace) -> int:
    from mmlib.course import make_student_notebooks

    for path in make_student_notebooks(args.out):
        print(f"wrote {path}")
    return 0


def _cmd_site(args: argparse.Namespace) -> int:
    from mmlib.course import build_site

    print(f"wrote {build_site(args.out)}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from mmlib.bench import run_benchmark

    run_benchmark(args.device, steps=args.steps, notebooks=not args.no_notebooks, out=args.out)
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmlib", description="The course's command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the registered experiments")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="run one experiment and write DIR/metrics.json and DIR/arrays.npz")
    p.add_argument("name", help="experiment name (see 'list')")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default=None, help="output folder (omit to only print the metrics)")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available, or $MMLIB_DEVICE)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("build", help="sync notebooks/NN_*.py to .ipynb and execute them in place")
    p.add_argument("notebooks", nargs="*", help="notebook numbers or paths (default: all)")
    p.add_argument("--no-execute", action="store_true", help="only sync the .ipynb with its .py")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("student", help="write the student notebooks (solutions replaced by stubs) into a folder")
    p.add_argument("--out", default="student", help="output folder (default: student/, not committed)")
    p.set_defaults(func=_cmd_student)

    p = sub.add_parser("site", help="build an HTML version of the whole course (executed notebooks + index)")
    p.add_argument("--out", default="site", help="output folder (default: site/, not committed)")
    p.set_defaults(func=_cmd_site)

    p = sub.add_parser("bench", help="measure matmul peak, trainer throughput and every notebook's time and memory")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    p.add_argument("--steps", type=int, default=300, help="training steps per throughput run (default 300)")
    p.add_argument("--no-notebooks", action="store_true", help="skip executing the notebooks")
    p.add_argument("--out", default="bench.json", help="where to write the JSON report (default bench.json)")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
