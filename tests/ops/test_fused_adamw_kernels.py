"""Fused AdamW kernels (CPU SIMD per ISA, reference, Triton interpreted, CUDA) against references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyzero
from pyzero import _native
from pyzero.reference import fused_adamw_reference
from tests.conftest import PARITY_STEPS, SIZES, TOL, TRITON_SIZES, rel_err
from tests.helpers import adamw_fp64_reference, random_grads

HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, adamw_mode=True, maximize=False)


def cpu_isas() -> list[str]:
    order = ["scalar", "avx2", "avx512"]
    best = _native.C.cpu_isa_detected()
    return order[: order.index(best) + 1]


@pytest.fixture(params=cpu_isas())
def cpu_isa(request):
    before = _native.C.cpu_isa()
    _native.C.set_cpu_isa(request.param)
    yield request.param
    _native.C.set_cpu_isa(before)


def run_steps(n, grads, backend, device="cpu", offset=0, hyper=HYPER, out_dtype=None, p0=None):
    """Runs len(grads) steps of pyzero.fused_adamw on views starting `offset` elements into buffers."""
    buf = torch.empty(n + offset, device=device)
    p = buf[offset:]
    p.copy_(p0 if p0 is not None else torch.linspace(-1, 1, n))
    m = torch.zeros(n + offset, device=device)[offset:]
    v = torch.zeros(n + offset, device=device)[offset:]
    step = torch.zeros((), device=device)
    out = torch.empty(n + offset, dtype=out_dtype, device=device)[offset:] if out_dtype else None
    for g in grads:
        gbuf = torch.empty(n + offset, dtype=g.dtype, device=device)
        gbuf[offset:] = g
        pyzero.fused_adamw(
            [p],
            [gbuf[offset:]],
            [m],
            [v],
            [step],
            params_out=[out] if out is not None else None,
            backend=backend,
            **hyper,
        )
    return p, m, v, step, out


@pytest.mark.parametrize("n", SIZES)
def test_cpu_fp32_matches_torch_fp64(cpu_isa, n):
    grads = random_grads(n)
    p, _, _, step, _ = run_steps(n, grads, "cpu")
    ref = adamw_fp64_reference(torch.linspace(-1, 1, n), grads, lr=1e-3, weight_decay=0.01)
    assert rel_err(p, ref) <= TOL["adam_fp32_vs_fp64"]
    assert float(step) == PARITY_STEPS


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_cpu_unaligned_views_equal_aligned(cpu_isa, offset):
    n = 4097
    grads = random_grads(n)
    aligned = run_steps(n, grads, "cpu")
    shifted = run_steps(n, grads, "cpu", offset=offset)
    for a, b in zip(aligned[:3], shifted[:3], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("n", [17, 278011])
def test_isas_agree_bitwise_and_with_reference(n):
    """Every ISA gives the same bits (scalar tails and vector bodies share one op order).

    The plain-torch reference agrees to rounding only: torch's vectorized CPU sqrt is not
    correctly rounded for large tensors, while the kernels use IEEE sqrt.
    """
    grads = random_grads(n)
    results = {}
    before = _native.C.cpu_isa()
    for isa in cpu_isas():
        _native.C.set_cpu_isa(isa)
        results[isa] = run_steps(n, grads, "cpu")
    _native.C.set_cpu_isa(before)
    first = results["scalar"]
    for name, res in results.items():
        for a, b in zip(first[:3], res[:3], strict=True):
            assert torch.equal(a, b), name
    ref = run_steps(n, grads, "reference")
    for a, b in zip(first[:3], ref[:3], strict=True):
        assert rel_err(a, b) <= TOL["adam_fp32_vs_fp64"]


@pytest.mark.parametrize(
    "hyper",
    [
        dict(HYPER, adamw_mode=False, weight_decay=0.1),
        dict(HYPER, maximize=True),
        dict(HYPER, weight_decay=0.0, lr=3e-2, beta1=0.5, beta2=0.9, eps=1e-6),
    ],
    ids=["adam_l2", "maximize", "other_hyper"],
)
def test_modes_match_torch_fp64(cpu_isa, hyper):
    n = 4097
    grads = random_grads(n)
    p, *_ = run_steps(n, grads, "cpu", hyper=hyper)
    ref = adamw_fp64_reference(
        torch.linspace(-1, 1, n),
        grads,
        lr=hyper["lr"],
        betas=(hyper["beta1"], hyper["beta2"]),
        eps=hyper["eps"],
        weight_decay=hyper["weight_decay"],
        adamw=hyper["adamw_mode"],
        maximize=hyper["maximize"],
    )
    assert rel_err(p, ref) <= TOL["adam_fp32_vs_fp64"]


def lowp_errors(n, lowp, backend, device="cpu"):
    """(pyzero error, plain-torch baseline error) of the low-precision param vs an fp64 AdamW.

    Both take the same low-precision grads. The baseline is the plain-torch composition of the
    contract: torch.optim.AdamW on fp32 master weights, then a cast to the low-precision param.
    (Pure bf16/fp16 torch AdamW is far worse, and in fp16 its eps underflows to NaN.)
    """
    p0 = torch.randn(n, dtype=torch.float64).to(lowp).float()  # representable start for every run
    grads = random_grads(n, dtype=lowp)
    ref = adamw_fp64_reference(p0, grads, lr=1e-3, weight_decay=0.01)
    _, _, _, _, out = run_steps(
        n, [g.to(device) for g in grads], backend, device=device, out_dtype=lowp, p0=p0
    )
    master = p0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([master], lr=1e-3, weight_decay=0.01, foreach=False)
    for g in grads:
        master.grad = g.float()
        opt.step()
    return rel_err(out.cpu(), ref), rel_err(master.detach().to(lowp), ref)


@pytest.mark.parametrize("lowp", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [17, 278011])
def test_cpu_lowp_grads_and_out_within_2x_of_baseline(cpu_isa, lowp, n):
    ours, baseline = lowp_errors(n, lowp, "cpu")
    assert ours <= TOL["lowp_vs_baseline_factor"] * baseline, (ours, baseline)


def test_lowp_out_is_rounded_master(cpu_isa):
    n = 4097
    grads = random_grads(n, dtype=torch.bfloat16)
    for lowp in (torch.bfloat16, torch.float16):
        p, _, _, _, out = run_steps(n, grads, "cpu", out_dtype=lowp)
        assert torch.equal(out, p.to(lowp))


def test_bf16_out_rounding_edge_cases(cpu_isa):
    """NaN stays NaN, +-inf and +-0 survive, ties round to even (as torch's fp32 -> bf16 cast)."""
    vals = torch.tensor(
        [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.0e38, -1e-40],
        dtype=torch.float32,
    )
    n = vals.numel() * 3
    p = vals.repeat(3).clone()
    zeros = torch.zeros(n)
    out = torch.empty(n, dtype=torch.bfloat16)
    # lr = 0 and zero grads leave p unchanged, so out is exactly the rounding of p.
    pyzero.fused_adamw(
        [p],
        [zeros],
        [zeros.clone()],
        [zeros.clone()],
        [torch.zeros(())],
        params_out=[out],
        **dict(HYPER, lr=0.0, weight_decay=0.0),
        backend="cpu",
    )
    expect = vals.repeat(3).to(torch.bfloat16)
    assert torch.equal(out.isnan(), expect.isnan())
    keep = ~expect.isnan()
    assert torch.equal(out[keep].view(torch.int16), expect[keep].view(torch.int16))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_found_inf_skips_and_grad_scale_multiplies(backend):
    n = 4097
    g = random_grads(n, steps=1)[0]
    p, m, v, step, _ = run_steps(n, [g], backend)
    snap = [t.clone() for t in (p, m, v, step)]
    pyzero.fused_adamw(
        [p],
        [g * 1e30],
        [m],
        [v],
        [step],
        found_inf=torch.ones(()),
        grad_scale=torch.full((), 0.5),
        backend=backend,
        **HYPER,
    )
    for a, b in zip((p, m, v, step), snap, strict=True):
        assert torch.equal(a, b)
    # grad_scale = 0.25 on 4*g equals the plain step on g; found_inf = 0 runs normally.
    p2, m2, v2, s2 = (t.clone() for t in snap)
    pyzero.fused_adamw([p], [g], [m], [v], [step], backend=backend, **HYPER)
    pyzero.fused_adamw(
        [p2],
        [4 * g],
        [m2],
        [v2],
        [s2],
        grad_scale=torch.full((), 0.25),
        found_inf=torch.zeros(()),
        backend=backend,
        **HYPER,
    )
    for a, b in zip((p, m, v, step), (p2, m2, v2, s2), strict=True):
        assert torch.equal(a, b)


def test_many_tensors_of_mixed_sizes_in_one_call(cpu_isa):
    """One call over many tensors equals one call per tensor, bit for bit, and the reference."""
    sizes = [0, 1, 17, 4097, 100_000, 3, 70_001]
    ps = [torch.randn(s) for s in sizes]
    gs = [torch.randn(s) for s in sizes]
    single_ps = [p.clone() for p in ps]
    ref_ps = [p.clone() for p in ps]

    def fresh():
        return [(torch.zeros(s), torch.zeros(s), torch.zeros(())) for s in sizes]

    state, single_state, ref_state = fresh(), fresh(), fresh()
    for _ in range(3):
        pyzero.fused_adamw(ps, gs, *[list(x) for x in zip(*state, strict=True)], backend="cpu", **HYPER)
        for p, g, (m, v, s), rp, (rm, rv, rs) in zip(
            single_ps, gs, single_state, ref_ps, ref_state, strict=True
        ):
            pyzero.fused_adamw([p], [g], [m], [v], [s], backend="cpu", **HYPER)
            fused_adamw_reference([rp], [g], [rm], [rv], [], [rs], **HYPER)
    for a, b, r in zip(ps, single_ps, ref_ps, strict=True):
        assert torch.equal(a, b)
        assert rel_err(a, r) <= TOL["adam_fp32_vs_fp64"]


def test_threads_do_not_change_results():
    n = 278011
    grads = random_grads(n, steps=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_steps(n, grads, "cpu")
        torch.set_num_threads(max(2, threads))
        many = run_steps(n, grads, "cpu")
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one[:3], many[:3], strict=True):
        assert torch.equal(a, b)


@pytest.mark.triton
@pytest.mark.parametrize("n", TRITON_SIZES)
def test_triton_matches_reference(n):
    pytest.importorskip("triton")
    grads = random_grads(n, steps=3)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tri = run_steps(n, [g.to(device) for g in grads], "triton", device=device)
    ref = run_steps(n, grads, "reference")
    for a, b in zip(tri[:4], ref[:4], strict=True):
        assert rel_err(a.cpu(), b) <= TOL["adam_fp32_vs_fp64"]
    assert float(tri[3]) == 3


@pytest.mark.triton
def test_triton_lowp_found_inf_and_grad_scale():
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 3000
    g = random_grads(n, steps=1, dtype=torch.bfloat16)[0]
    tri = run_steps(n, [g.to(device)], "triton", device=device, out_dtype=torch.bfloat16)
    ref = run_steps(n, [g], "reference", out_dtype=torch.bfloat16)
    assert rel_err(tri[4].cpu(), ref[4]) <= 1e-2 and rel_err(tri[0].cpu(), ref[0]) <= TOL["adam_fp32_vs_fp64"]
    p, m, v, step, out = tri
    snap = [t.clone() for t in (p, m, v, step, out)]
    pyzero.fused_adamw(
        [p],
        [g.to(device)],
        [m],
        [v],
        [step],
        params_out=[out],
        found_inf=torch.ones((), device=device),
        grad_scale=torch.full((), 2.0, device=device),
        backend="triton",
        **HYPER,
    )
    for a, b in zip((p, m, v, step, out), snap, strict=True):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("n", [*SIZES, (1 << 22) + 5])
@pytest.mark.parametrize("offset", [0, 1])
def test_cuda_matches_reference(n, offset):
    if not _native.cuda_built():
        pytest.skip("pyzero._C built without CUDA")
    grads = random_grads(n)
    cu = run_steps(n, [g.cuda() for g in grads], "cuda", device="cuda", offset=offset)
    ref = adamw_fp64_reference(torch.linspace(-1, 1, n), grads, lr=1e-3, weight_decay=0.01)
    assert rel_err(cu[0].cpu(), ref) <= TOL["adam_fp32_vs_fp64"]
    assert float(cu[3]) == PARITY_STEPS


@pytest.mark.cuda
@pytest.mark.parametrize("lowp", [torch.bfloat16, torch.float16])
def test_cuda_lowp_within_2x_of_baseline(lowp):
    if not _native.cuda_built():
        pytest.skip("pyzero._C built without CUDA")
    ours, baseline = lowp_errors(278011, lowp, "cuda", device="cuda")
    assert ours <= TOL["lowp_vs_baseline_factor"] * baseline, (ours, baseline)


@pytest.mark.cuda
def test_cuda_found_inf_grad_scale_and_many_tensors():
    if not _native.cuda_built():
        pytest.skip("pyzero._C built without CUDA")
    sizes = [0, 1, 17, 4097, 100_000, 3, 70_001] * 5  # more tensors than one launch holds
    ps = [torch.randn(s, device="cuda") for s in sizes]
    gs = [torch.randn(s, device="cuda") for s in sizes]
    ref = [p.cpu() for p in ps]
    st = [[torch.zeros(s, device="cuda") for s in sizes] for _ in range(2)] + [
        [torch.zeros((), device="cuda") for _ in sizes]
    ]
    rst = [[torch.zeros(s) for s in sizes] for _ in range(2)] + [[torch.zeros(()) for _ in sizes]]
    scale = torch.full((), 0.5, device="cuda")
    pyzero.fused_adamw(ps, gs, *st, grad_scale=scale, found_inf=torch.zeros((), device="cuda"), **HYPER)
    pyzero.fused_adamw(ps, gs, *st, grad_scale=scale, found_inf=torch.ones((), device="cuda"), **HYPER)
    fused_adamw_reference(
        ref, [g.cpu() for g in gs], rst[0], rst[1], [], rst[2], grad_scale=scale.cpu(), **HYPER
    )
    for a, b in zip(ps, ref, strict=True):
        assert rel_err(a.cpu(), b) <= TOL["adam_fp32_vs_fp64"]
    assert all(float(s) == 1 for s in st[2])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 3000),
    offset=st.integers(0, 3),
    lr=st.floats(1e-5, 1e-1),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    weight_decay=st.floats(0.0, 0.5),
    adamw_mode=st.booleans(),
    maximize=st.booleans(),
    grad_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
)
def test_property_cpu_matches_reference(
    n, offset, lr, beta1, beta2, weight_decay, adamw_mode, maximize, grad_dtype
):
    """Any size, alignment, hyperparameters and grad dtype: the CPU kernel equals the reference."""
    hyper = dict(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=1e-8,
        weight_decay=weight_decay,
        adamw_mode=adamw_mode,
        maximize=maximize,
    )
    grads = random_grads(n, steps=2, dtype=grad_dtype)
    cpu = run_steps(n, grads, "cpu", offset=offset, hyper=hyper)
    ref = run_steps(n, grads, "reference", hyper=hyper)
    for a, b in zip(cpu[:4], ref[:4], strict=True):
        assert rel_err(a, b) <= TOL["adam_fp32_vs_fp64"]
