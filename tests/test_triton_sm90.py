"""Every Triton kernel launch of pyzero's Triton backends compiles for an H100 (tests/triton_sm90.py,
no GPU needed), and the tree kernels' PTX rounds as Note [Triton rounding] (pyzero/kernels/libm_triton.py)
says: no approximate operation, no fusion beyond the explicit fused multiply-adds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each compile-time switch of the tree twin and the values the launches must reach.
WALK_SWITCHES = {
    "FORMAT": {0, 1, 2, 3},
    "OUT": {0, 1, 2},
    "FINISH": {0, 1, 2},
    "ACC_F32": {False, True},
    "PAIR": {False, True},
    "MEAN": {False, True},
    "X_F64": {False, True},
    "HAS_KINDS": {False, True},
}


def _compiled() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.triton_sm90"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_every_triton_launch_compiles_for_sm90_and_the_tree_kernels_round_exactly():
    kernels = _compiled()
    names = {k["kernel"] for k in kernels}
    assert names == {"_walk_kernel", "_sum_value_rows_kernel", "_libm_exp_kernel", "_fused_adamw_kernel"}, (
        names
    )
    walks = [k["constants"] for k in kernels if k["kernel"] == "_walk_kernel"]
    for switch, values in WALK_SWITCHES.items():
        assert {w[switch] for w in walks} == values, switch
    # every finish in both precisions, in the walk and after a split walk
    for kernel in ("_walk_kernel", "_sum_value_rows_kernel"):
        finishes = {
            (k["constants"]["FINISH"], k["constants"]["ACC_F32"]) for k in kernels if k["kernel"] == kernel
        }
        assert finishes == {(f, a) for f in (0, 1, 2) for a in (False, True)}, kernel
    for k in kernels:
        if k["kernel"] == "_fused_adamw_kernel":
            continue
        assert k["enable_fp_fusion"] is False, k
        assert all(".rn." in op for op in k["ptx_ops"]), k  # no approximate op, each rounded once
    # the libm kernel holds libm_exp.h's fused multiply-adds once per element, and no other
    for k in kernels:
        if k["kernel"] == "_libm_exp_kernel":
            per_thread = k["constants"]["BLOCK"] // (32 * k["num_warps"])
            helper = (
                "float libm_expf(float x)"
                if k["signature"]["x_ptr"] == "*fp32"
                else "double libm_exp(double x)"
            )
            assert k["ptx_ops"].get("fma.rn.f64") == per_thread * _fmas_of(helper), k


def _fmas_of(signature: str) -> int:
    """The fused multiply-adds of a function of csrc/trees/libm_exp.h (glibc's, Note [Library exp])."""
    source = (ROOT / "csrc" / "trees" / "libm_exp.h").read_text()
    body = source[source.index(f"PYZERO_HD {signature} {{") :]
    return body[: body.index("\n}\n")].count("fma(")
