"""ZeRO pieces that need no process group: layout math, the memory plan, argument errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pyzero import FusedShardedAdam, plan
from pyzero.zero.layout import ALIGN_ELEMS, make_layout
from tests.zero.models import make_model


@settings(max_examples=200, deadline=None)
@given(
    numels=st.lists(st.integers(1, 500), min_size=1, max_size=12),
    world=st.integers(1, 8),
    bucket=st.integers(1, 3000),
)
def test_layout_invariants(numels, world, bucket):
    lay = make_layout(numels, world, bucket)
    unit = world * ALIGN_ELEMS
    assert lay.flat_numel % unit == 0 and lay.partition_numel * world == lay.flat_numel
    # params are aligned, in order, disjoint, inside the buffer
    for i, (off, n) in enumerate(zip(lay.offsets, lay.numels, strict=True)):
        assert off % ALIGN_ELEMS == 0
        if i:
            assert off >= lay.offsets[i - 1] + lay.numels[i - 1]
        assert off + n <= lay.flat_numel
        pieces = lay.param_pieces(i)
        assert sum(e - s for _, s, e in pieces) == n and pieces[0][1] == off
    # buckets tile the buffer; shards are equal, aligned, and tile each rank's partition
    assert lay.bucket_bounds[0][0] == 0 and lay.bucket_bounds[-1][1] == lay.flat_numel
    for (_, e0), (s1, _) in zip(lay.bucket_bounds, lay.bucket_bounds[1:], strict=False):
        assert e0 == s1
    for b in range(lay.num_buckets):
        s, e = lay.bucket_bounds[b]
        assert (e - s) % unit == 0
        starts = [lay.shard_range(b, r)[0] for r in range(world)]
        assert all(x % ALIGN_ELEMS == 0 for x in starts)
        assert lay.shard_range(b, world - 1)[1] == e
    assert sum(lay.shard_numel(b) for b in range(lay.num_buckets)) == lay.partition_numel


def test_plan_reproduces_zero_paper_figure_1():
    """7.5B parameters, 64 ranks, fp16 params and grads, fp32 Adam state: 120 / 31.4 / 16.6 / 1.9 GB."""
    gb = [plan(7_500_000_000, 64, s, torch.float16)["model_states"] / 1e9 for s in (0, 1, 2, 3)]
    assert [round(x, 1) for x in gb] == [120.0, 31.4, 16.6, 1.9]


def test_world_one_without_process_group_matches_adamw():
    model = make_model()
    ref = make_model().double()
    opt = FusedShardedAdam(model, lr=1e-2, stage=2, bucket_cap_mb=1e-4)
    ref_opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=1e-2, foreach=False)
    x = torch.randint(0, 37, (4, 6))
    for _ in range(5):
        for m, o in ((model, opt), (ref, ref_opt)):
            nn.functional.cross_entropy(m(x[:, :-1]).float().reshape(-1, 37), x[:, 1:].reshape(-1)).backward()
            o.step()
            o.zero_grad()
    a = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    b = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    assert ((a - b).norm() / b.norm()).item() <= 1e-5
    assert opt.memory_report() == plan(model, 1, 2, bucket_cap_mb=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stage": 4}, "stage must be 1, 2 or 3, got 4"),
        ({"bucket_cap_mb": 0}, "bucket_cap_mb"),
        ({"loss_scale": "auto"}, "loss_scale"),
        ({"accumulation_steps": 0}, "accumulation_steps"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"master_dtype": torch.bfloat16}, "master_dtype"),
        ({"lr": -1.0}, "lr=-1.0"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FusedShardedAdam(make_model(), **kwargs)


def test_overlap_param_gather_needs_the_module():
    with pytest.raises(ValueError, match=r"overlap_param_gather=True needs the nn\.Module"):
        FusedShardedAdam(list(make_model().parameters())[:2], overlap_param_gather=True)


def test_bad_params_are_named():
    a = nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="more than one parameter group"):
        FusedShardedAdam([{"params": [a]}, {"params": [a]}])
    with pytest.raises(ValueError, match="one device"):
        FusedShardedAdam([a, nn.Parameter(torch.zeros(4, device="meta"))])
    with pytest.raises(ValueError, match="no trainable parameters"):
        FusedShardedAdam([nn.Parameter(torch.zeros(4), requires_grad=False)])
    with pytest.raises(ValueError, match="float64"):
        FusedShardedAdam([nn.Parameter(torch.zeros(4, dtype=torch.float64))])


def test_load_state_dict_rejects_other_stage_or_size():
    opt = FusedShardedAdam(make_model(), stage=2)
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="stage=2 but this optimizer has stage=1"):
        FusedShardedAdam(make_model(), stage=1).load_state_dict(sd)
    small = FusedShardedAdam(nn.Linear(3, 3), stage=2)
    with pytest.raises(ValueError, match="partition has"):
        small.load_state_dict(sd)


def test_lr_scheduler_drives_param_groups():
    model = make_model()
    opt = FusedShardedAdam(
        [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-2}], stage=1
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x = torch.randint(0, 37, (2, 6))
    for _ in range(3):
        nn.functional.cross_entropy(model(x[:, :-1]).float().reshape(-1, 37), x[:, 1:].reshape(-1)).backward()
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 8)
