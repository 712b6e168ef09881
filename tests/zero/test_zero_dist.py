"""FusedShardedAdam on real gloo processes (world sizes 1-4) against a single-process reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.zero import jobs
from tests.zero.dist_utils import run_ranks

# fp32 parity bound (the issue's), and the stated bound for bf16 params (bf16 rounding of the
# params themselves is 2^-8 relative).
FP32_TOL = 1e-5
BF16_TOL = 1e-2

CONFIGS = [
    {"stage": 1},
    {"stage": 2},
    {"stage": 1, "accum": 2, "clip": 0.05},
    {"stage": 2, "accum": 2, "clip": 0.05},
    {"stage": 2, "accum": 2, "no_sync": True},
    {"stage": 1, "dtype": torch.bfloat16},
    {"stage": 2, "dtype": torch.bfloat16, "bucket_mb": 25},
    {"stage": 2, "prefetch": True},
    {"stage": 1, "prefetch": True, "accum": 2, "bucket_mb": 25},
    {"stage": 3},
    {"stage": 3, "checkpoint": True, "accum": 2, "clip": 0.05},
    {"stage": 3, "depth": 0, "reshard": False, "bucket_mb": 25},
    {"stage": 3, "units": [nn.Sequential], "accum": 2, "no_sync": True, "checkpoint": True},
    {"stage": 3, "dtype": torch.bfloat16},
]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_parity_with_single_process_adamw(world):
    errors = run_ranks(world, jobs.parity_job, CONFIGS)[0]
    for cfg, err in zip(CONFIGS, errors, strict=True):
        tol = BF16_TOL if cfg.get("dtype") == torch.bfloat16 else FP32_TOL
        assert err <= tol, (world, cfg, err)


@pytest.mark.parametrize("world", [2, 3])
def test_memory_report_equals_plan_and_comm_matches_theory(world):
    for rank_result in run_ranks(world, jobs.accounting_job):
        for key, r in rank_result.items():
            assert r["report"] == r["plan"], key
            for k in ("exp_avg", "exp_avg_sq"):
                assert r["report"][k] * world == r["unsharded"][k], key  # exactly 1/N of the padded total
            pbytes = 4 if key.endswith("float32") else 2
            assert r["comm"]["reduce_scatter"] == r["flat_numel"] * 4, (
                key
            )  # fp32 reduction (bf16: fp32 accum)
            assert r["comm"]["all_gather"] == r["flat_numel"] * pbytes, key


def test_fp16_overflow_on_one_rank_skips_on_all_and_lowers_scale():
    results = run_ranks(2, jobs.overflow_job)
    for r in results:
        h = r["history"]
        assert [s["skipped"] for s in h] == [False, True, False]
        assert [s["changed"] for s in h] == [True, False, True]
        assert h[1]["scale"] == h[0]["scale"] / 2


def test_bad_input_raises_on_every_rank_without_hanging():
    for r in run_ranks(2, jobs.errors_job):
        assert "without a backward pass" in r["step_without_backward"]
        assert (
            "world size 2 is larger than the number of trainable parameter elements (1)"
            in (r["world_larger_than_numel"])
        )
        assert "built a different layout" in r["mismatch"]


def test_state_dict_round_trip_same_world_size():
    assert all(r["equal"] for r in run_ranks(2, jobs.state_dict_job))
