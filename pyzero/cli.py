"""The ``pyzero`` command line: ``pyzero info``, ``pyzero demo``."""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyzero", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="version, built backends, CPU ISA, CUDA archs, threads")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    p_demo = sub.add_parser("demo", help="train a small model with FusedAdamW and torch AdamW side by side")
    p_demo.add_argument("--steps", type=int, default=60)
    p_demo.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    if args.command == "info":
        from pyzero.info import format_info, info

        d = info()
        print(json.dumps(d, indent=2) if args.json else format_info(d))
        return 0
    if args.command == "demo":
        from pyzero.demo import run_demo

        return run_demo(steps=args.steps, device=args.device)
    return 2
