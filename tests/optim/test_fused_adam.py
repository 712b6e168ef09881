"""FusedAdam / FusedAdamW as drop-in torch.optim optimizers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import pyzero
from pyzero import FusedAdam, FusedAdamW
from tests.conftest import PARITY_STEPS, TOL, rel_err


def small_model(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(17, 33), nn.Tanh(), nn.Linear(33, 5)).to(dtype)


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups with different lr and weight decay (weights vs biases)."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights, "weight_decay": 0.05}, {"params": biases, "lr": 3e-3, "weight_decay": 0.0}]


def train(model, opt, steps=PARITY_STEPS, sched=None, seed=1):
    gen = torch.Generator().manual_seed(seed)
    p0 = next(model.parameters())
    for _ in range(steps):
        x = torch.randn(8, 17, generator=gen, dtype=torch.float64).to(p0.device, p0.dtype)
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sched is not None:
            sched.step()


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"),
    [
        (FusedAdamW, torch.optim.AdamW, {}),
        (FusedAdam, torch.optim.Adam, {"weight_decay": 0.01}),
        (FusedAdam, torch.optim.Adam, {"decoupled_weight_decay": True, "weight_decay": 0.01}),
        (FusedAdamW, torch.optim.AdamW, {"maximize": True, "betas": (0.8, 0.99), "eps": 1e-6}),
    ],
)
@pytest.mark.parametrize(
    ("backend", "device"),
    [
        ("auto", "cpu"),
        ("cpu", "cpu"),
        ("reference", "cpu"),
        pytest.param(
            "triton", "cpu", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="GPU: see cuda")
        ),
        pytest.param("cuda", "cuda", marks=pytest.mark.cuda),
        pytest.param("triton", "cuda", marks=pytest.mark.cuda),
    ],
)
def test_param_groups_match_torch_in_fp64(ours, theirs, kwargs, backend, device):
    """fp32 pyzero vs the same torch optimizer run in fp64 from the same start, lr scheduler on."""
    if backend == "cuda" and not pyzero._native.cuda_built():
        pytest.skip("pyzero._C built without CUDA")
    model = small_model().to(device)
    ref = copy.deepcopy(model).double().cpu()
    opt = ours(param_groups(model), lr=1e-3, backend=backend, **kwargs)
    ref_opt = theirs(param_groups(ref), lr=1e-3, foreach=False, **kwargs)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=3, gamma=0.5)
    train(model, opt, sched=sched)
    train(ref, ref_opt, sched=ref_sched)
    model.cpu()
    assert rel_err(flat(model), flat(ref)) <= TOL["adam_fp32_vs_fp64"]
    assert opt.param_groups[1]["lr"] == ref_opt.param_groups[1]["lr"]
    assert all(float(s["step"]) == PARITY_STEPS for s in opt.state.values())


def test_defaults_and_signature_match_torch():
    p = [nn.Parameter(torch.zeros(3))]
    for ours, theirs in ((FusedAdamW, torch.optim.AdamW), (FusedAdam, torch.optim.Adam)):
        a, b = ours(p).defaults, theirs(p).defaults
        assert {k: a[k] for k in b} == b


def test_state_dict_round_trips_both_ways_with_torch():
    model = small_model()
    twin = copy.deepcopy(model)
    ours = FusedAdamW(param_groups(model), lr=1e-3)
    theirs = torch.optim.AdamW(param_groups(twin), lr=1e-3, foreach=False)
    train(model, ours, steps=3)
    train(twin, theirs, steps=3)
    # torch -> pyzero: continue both from torch's state; pyzero's load keeps fp32 moments on its own.
    m1, m2 = copy.deepcopy(twin), copy.deepcopy(twin)
    o1 = FusedAdamW(param_groups(m1), lr=1e-3)
    o1.load_state_dict(theirs.state_dict())
    o2 = torch.optim.AdamW(param_groups(m2), lr=1e-3, foreach=False)
    o2.load_state_dict(copy.deepcopy(theirs.state_dict()))
    train(m1, o1, steps=3, seed=5)
    train(m2, o2, steps=3, seed=5)
    assert rel_err(flat(m1), flat(m2)) <= TOL["adam_fp32_vs_fp64"]
    # pyzero -> torch, and pyzero -> pyzero
    m3, m4 = copy.deepcopy(model), copy.deepcopy(model)
    o3 = torch.optim.AdamW(param_groups(m3), lr=1e-3, foreach=False)
    o3.load_state_dict(copy.deepcopy(ours.state_dict()))  # torch's loader aliases same-dtype tensors
    o4 = FusedAdamW(param_groups(m4), lr=1e-3)
    o4.load_state_dict(ours.state_dict())
    train(m3, o3, steps=3, seed=5)
    train(m4, o4, steps=3, seed=5)
    train(model, ours, steps=3, seed=5)
    assert rel_err(flat(m3), flat(model)) <= TOL["adam_fp32_vs_fp64"]
    assert torch.equal(flat(m4), flat(model))
    sd = ours.state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert sd["param_groups"][1]["lr"] == 3e-3


def test_load_does_not_alias_the_source_state():
    model = small_model()
    opt = FusedAdamW(model.parameters())
    train(model, opt, steps=1)
    sd = opt.state_dict()
    snap = copy.deepcopy(sd)
    other = FusedAdamW(copy.deepcopy(model).parameters())
    other.load_state_dict(sd)
    train(model, other, steps=1)
    assert torch.equal(sd["state"][0]["exp_avg"], snap["state"][0]["exp_avg"])


@pytest.mark.parametrize("lowp", [torch.bfloat16, torch.float16])
def test_master_weights_keep_fp32_and_write_lowp_param(lowp):
    model = small_model(lowp)
    opt = FusedAdamW(model.parameters(), lr=1e-2, master_weights=True)
    train(model, opt, steps=3)
    for p in model.parameters():
        st = opt.state[p]
        assert p.dtype == lowp and st["master_param"].dtype == torch.float32
        assert st["exp_avg"].dtype == torch.float32
        assert torch.equal(p.detach(), st["master_param"].to(lowp))
    # state_dict round trip keeps the fp32 master and moments
    twin = copy.deepcopy(model)
    opt2 = FusedAdamW(twin.parameters(), lr=1e-2, master_weights=True)
    opt2.load_state_dict(opt.state_dict())
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        for k in ("master_param", "exp_avg", "exp_avg_sq"):
            assert opt2.state[q][k].dtype == torch.float32
            assert torch.equal(opt2.state[q][k], opt.state[p][k])


def test_zero_grad_sets_none_and_params_without_grad_are_skipped():
    model = small_model()
    frozen = model[0].bias
    frozen.requires_grad_(False)
    opt = FusedAdamW(model.parameters())
    before = frozen.detach().clone()
    train(model, opt, steps=2)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(frozen, before) and frozen not in opt.state


def test_grad_scaler_integration_skips_inf_steps():
    model = small_model()
    twin = copy.deepcopy(model)
    opt = FusedAdamW(model.parameters(), lr=1e-3)
    ref_opt = torch.optim.AdamW(twin.parameters(), lr=1e-3, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(8, 17)
    for step in range(4):
        loss = model(x).square().mean()
        if step == 2:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        if step != 2:
            twin(x).square().mean().backward()
            ref_opt.step()
            ref_opt.zero_grad()
    assert scaler.get_scale() == 2.0**9  # backed off once
    assert all(float(s["step"]) == 3 for s in opt.state.values())
    assert rel_err(flat(model), flat(twin)) <= TOL["adam_fp32_vs_fp64"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1e-3}, "lr=-0.001"),
        ({"betas": (1.0, 0.999)}, r"betas\[0\]"),
        ({"betas": (0.9, -0.1)}, r"betas\[1\]"),
        ({"eps": 0.0}, "eps=0.0"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"amsgrad": True}, "amsgrad"),
        ({"backend": "gpu"}, "backend"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FusedAdamW([nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize(
    ("param", "match"),
    [
        (nn.Parameter(torch.zeros(2, dtype=torch.complex64)), "complex"),
        (torch.zeros(2, dtype=torch.int64), "int64"),
        (nn.Parameter(torch.zeros(2, dtype=torch.bfloat16)), "master_weights=True"),
        (nn.Parameter(torch.zeros(2, dtype=torch.float64)), "float64"),
    ],
)
def test_bad_params_are_named(param, match):
    with pytest.raises(ValueError, match=rf"param_groups\[1\]\['params'\]\[0\].*{match}|{match}"):
        FusedAdamW([{"params": [nn.Parameter(torch.zeros(1))]}, {"params": [param]}])


def test_sparse_grad_is_named():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = FusedAdamW(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"param_groups\[0\]\['params'\]\[0\] has a sparse gradient"):
        opt.step()


def test_functional_api_rejects_mixed_devices_and_bad_lists():
    p, g = torch.zeros(4), torch.zeros(4)
    meta = torch.zeros(4, device="meta")
    st = [torch.zeros(()), torch.zeros(())]
    with pytest.raises(ValueError, match=r"params\[1\] is on meta but params\[0\] is on cpu"):
        pyzero.fused_adamw([p, meta], [g, g], [g.clone(), g.clone()], [g.clone(), g.clone()], st, lr=1e-3)
    with pytest.raises(ValueError, match="grads has 1 tensors but params has 2"):
        pyzero.fused_adamw([p, p], [g], [g, g], [g, g], st, lr=1e-3)
    with pytest.raises(ValueError, match=r"grads\[0\] must be one of"):
        pyzero.fused_adamw([p], [g.double()], [g], [g], st[:1], lr=1e-3)
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] has 3 elements"):
        pyzero.fused_adamw([p], [g], [torch.zeros(3)], [g], st[:1], lr=1e-3)
    with pytest.raises(ValueError, match=r"params\[0\] must be contiguous"):
        q = torch.zeros(4, 4).t()
        pyzero.fused_adamw([q], [q], [q], [q], st[:1], lr=1e-3)


def test_op_schema_and_fake_kernel_opcheck():
    n = 37
    args = (
        [torch.randn(n), torch.randn(5)],
        [torch.randn(n, dtype=torch.bfloat16), torch.randn(5, dtype=torch.bfloat16)],
        [torch.zeros(n), torch.zeros(5)],
        [torch.zeros(n), torch.zeros(5)],
        [torch.empty(n, dtype=torch.bfloat16), torch.empty(5, dtype=torch.bfloat16)],
        [torch.zeros(()), torch.zeros(())],
    )
    kwargs = dict(
        lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, adamw_mode=True, maximize=False
    )
    torch.library.opcheck(torch.ops.pyzero.fused_adamw_.default, args, kwargs)
    torch.library.opcheck(
        torch.ops.pyzero.fused_adamw_.default,
        args,
        dict(kwargs, grad_scale=torch.ones(()), found_inf=torch.zeros(())),
    )


def test_compiled_step_has_no_graph_break():
    model = small_model()
    twin = copy.deepcopy(model)
    opt = FusedAdamW(model.parameters(), lr=1e-3)
    eager = FusedAdamW(twin.parameters(), lr=1e-3)
    x = torch.randn(8, 17)
    for m in (model, twin):
        m(x).square().mean().backward()
    opt.step()  # state is created eagerly, as with torch's optimizers
    eager.step()
    for m in (model, twin):
        m(x).square().mean().backward()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def compiled_step():
        opt.step()

    compiled_step()
    eager.step()
    assert torch.equal(flat(model), flat(twin))
