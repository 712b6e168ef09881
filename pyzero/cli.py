"""The ``pyzero`` command line: ``pyzero info``, ``pyzero demo``, ``pyzero checkpoint info|consolidate``."""

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
    p_ckpt = sub.add_parser("checkpoint", help="inspect or consolidate a pyzero checkpoint")
    ck = p_ckpt.add_subparsers(dest="action", required=True)
    p_ck_info = ck.add_parser("info", help="format, world size and stage at save, sizes, steps")
    p_ck_info.add_argument("path", help="a checkpoint directory, or one whose `latest` names it")
    p_ck_info.add_argument("--json", action="store_true", help="print JSON")
    p_ck_cons = ck.add_parser("consolidate", help="write the full model as one safetensors file")
    p_ck_cons.add_argument("path")
    p_ck_cons.add_argument("out", help="output .safetensors file")
    p_ck_cons.add_argument("--include-optimizer", action="store_true", help="add master / Adam moments")
    args = parser.parse_args(argv)

    if args.command == "checkpoint":
        return _checkpoint(args)

    if args.command == "info":
        from pyzero.info import format_info, info

        d = info()
        print(json.dumps(d, indent=2) if args.json else format_info(d))
        return 0
    if args.command == "demo":
        from pyzero.demo import run_demo

        return run_demo(steps=args.steps, device=args.device)
    return 2


def _checkpoint(args: argparse.Namespace) -> int:
    from pyzero.zero.checkpoint import checkpoint_info, consolidate_checkpoint

    if args.action == "info":
        d = checkpoint_info(args.path)
        if args.json:
            print(json.dumps(d, indent=2))
        else:
            print(
                f"{d['path']}: {d['format']}, saved at world size {d['world_size']}, stage {d['stage']}\n"
                f"{d['parameters']} parameters ({d['elements'] / 1e6:.2f}M elements), {d['files']} files, "
                f"{d['bytes'] / 2**20:.1f} MiB, Adam step(s) {d['steps']}\nextra: {d['extra']}"
            )
        return 0
    out = consolidate_checkpoint(args.path, args.out, include_optimizer=args.include_optimizer)
    print(f"wrote {out}")
    return 0
