"""Note [Prepared walks] (csrc/trees/tree_walk_plan.h) on CPU tensors: pyzero._C.WalkPlan against the
pyzero::tree_walk op bit for bit (host twin and emulated CUDA kernel), its errors, WalkPlans' buckets, and
CompiledForest's prepared calls through a stand-in of the CUDA backend whose runner walks CPU tensors."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
import torch
import xgboost as xgb
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
)

from pyzero import _native, trees
from pyzero.trees import compiled, fast_cpu, gpu, gpu_layout, inputs
from tests.trees.helpers import finish_models, mixed_data
from tests.trees.test_gpu_layouts import EMULATED_CONFIGS, EMULATED_TILED, _models

C = _native.require("the prepared-walk tests")
ROW_COUNTS = (1, 7, 40)


@pytest.mark.parametrize("case", range(10))
def test_a_prepared_walk_equals_the_op_bit_for_bit(case):
    """Raw sums, leaves, fused finishes and flat sums of every layout, host twin and emulated kernel,
    direct and staged (through its buffers, or from the rows' own memory), for batches of other sizes
    than the prototype's (none)."""
    name, X, model = _models()[case]
    cpu = trees.compile(model, backend="cpu", strategy="traverse")
    f = cpu.forest
    rows, _ = trees.compiled.verification_rows(model, cpu, X)
    x, _ = cpu._input(rows)
    x = x[: max(ROW_COUNTS)].contiguous()
    f32 = f.extra.get("accumulate") == "float32"
    binary = f.classes is not None and f.n_outputs == 1
    finish = compiled.fused_finish(f, post=True, pair=binary)
    for lay in gpu_layout.LAYOUTS:
        if gpu_layout.why_not(f, lay, cpu._input_dtype) is not None:
            continue
        g = gpu_layout.GpuLayout(f, lay, cpu._input_dtype, torch.device("cpu"))
        like = x[:0]
        runs = ((False, [256, 1, 1, 1], 0), (True, EMULATED_CONFIGS[2], 0), (False, [256, 1, 1, 1], 64))
        for emulate, cfg, host_rows in runs:
            kw = {"emulate": emulate, "host_rows": host_rows}
            raw = g.plan(like, cpu._base, f32, False, cfg, **kw)
            leaves = g.plan(like, cpu._base, False, True, cfg, **kw)
            done = None if finish is None else g.plan(like, cpu._base, f32, False, cfg, finish=finish, **kw)
            flat = g.plan(like, cpu._base, f32, False, cfg, flat=True, **kw) if f.n_outputs == 1 else None
            assert raw.staged == (host_rows > 0)
            for n in ROW_COUNTS:
                xr = x[:n]
                want = g.walk(xr, cpu._base, f32, False, cfg, emulate=emulate)
                assert torch.equal(raw(xr), want), (name, lay, emulate, n)
                if host_rows:  # rows of torch's allocator, read directly (xr: numpy's memory, copied)
                    assert torch.equal(raw(xr.clone()), want), (name, lay, n)
                assert torch.equal(leaves(xr), g.walk(xr, cpu._base, False, True, cfg, emulate)), (name, lay)
                if done is not None:
                    want_done = g.walk(xr, cpu._base, f32, False, cfg, emulate, finish)
                    assert torch.equal(done(xr), want_done), (name, lay, emulate, n)
                if flat is not None:
                    out = flat(xr)
                    assert out.shape == (n,) and torch.equal(out, want[:, 0]), (name, lay, emulate, n)


def test_the_emulated_kernels_finish_equals_the_native_libraries_bit_for_bit():
    """Note [Fused finish] inside the CUDA kernel's own code (emulated on the host, with the host's expf
    and exp, which Note [Library exp] repeats on the device): sigmoid, exp, the forests' mean and the
    binary pair of every layout equal the native library's probabilities and predictions bit for bit."""
    checked = []
    for model, rows in finish_models():
        method = next(m for m in ("predict_proba", "score_samples", "predict") if hasattr(model, m))
        cpu = trees.compile(model, backend="cpu", strategy="traverse")
        f = cpu.forest
        binary = f.classes is not None and f.n_outputs == 1
        finish = compiled.fused_finish(f, post=True, pair=method == "predict_proba" and binary)
        if method == "score_samples" or finish is None:
            continue
        f32 = f.extra.get("accumulate") == "float32" and f.aggregation != "mean"
        want = np.asarray(getattr(model, method)(rows[:60]), dtype=np.float64)
        x = cpu._input(rows[:60])[0]
        for lay in gpu_layout.LAYOUTS:
            if gpu_layout.why_not(f, lay, cpu._input_dtype) is not None:
                continue
            g = gpu_layout.GpuLayout(f, lay, cpu._input_dtype, torch.device("cpu"))
            cfg = EMULATED_TILED[0] if lay == "perfect-tiled" else EMULATED_CONFIGS[2]
            got = g.walk(x, cpu._base, f32, False, cfg, True, finish).numpy()
            assert np.array_equal(got.reshape(want.shape), want), (type(model).__name__, lay)
        checked.append(type(model).__name__)
    assert len(checked) == 10, checked


def _plan_and_rows():
    X, y = mixed_data(n=200)
    model = lgb.LGBMClassifier(n_estimators=4, num_leaves=6, verbose=-1).fit(X, y["multi"])
    cpu = trees.compile(model, backend="cpu")
    g = gpu_layout.GpuLayout(cpu.forest, "compact-bfs", cpu._input_dtype, torch.device("cpu"))
    x = torch.as_tensor(np.nan_to_num(X[:20]), dtype=cpu._input_dtype)
    return cpu, g, x


def test_a_prepared_walk_names_what_x_should_be():
    cpu, g, x = _plan_and_rows()
    plan = g.plan(x[:0], cpu._base, False, False, [256, 1, 1, 1])
    assert plan.takes(x) and plan.takes(x[:0])
    staged = g.plan(x[:0], cpu._base, False, False, [256, 1, 1, 1], host_rows=8)
    assert staged.takes(x[:8]) and not staged.takes(x[:9])
    with pytest.raises(
        RuntimeError, match=r"\(rows, 6\) on the host, at most 8 rows, got a Float tensor of shape \[9, 6\]"
    ):
        staged(x[:9])
    with pytest.raises(RuntimeError, match="host_rows must be >= 0"):
        g.plan(x[:0], cpu._base, False, False, [256, 1, 1, 1], host_rows=-1)
    others = {
        "float64": x.double(),
        "columns": x[:, :-1].contiguous(),
        "not contiguous": x.t().contiguous().t(),
        "one dimension": x[0],
    }
    for what, other in others.items():
        assert not plan.takes(other), what
        with pytest.raises(RuntimeError, match=r"takes x as a contiguous Float tensor of shape \(rows, 6\)"):
            plan(other)
    with pytest.raises(RuntimeError, match="flat outputs need sums of one column"):
        g.plan(x[:0], cpu._base, False, False, [256, 1, 1, 1], flat=True)
    with pytest.raises(RuntimeError, match="base must hold one float64 per output"):
        g.plan(x[:0], cpu._base[:1], False, False, [256, 1, 1, 1])
    with pytest.raises(RuntimeError, match="config must be"):
        g.plan(x[:0], cpu._base, False, False, [256, 1], emulate=True)
    with pytest.raises(RuntimeError, match="finish must be"):
        g.plan(x[:0], cpu._base, False, False, [256, 1, 1, 1], finish=(1.0,))


def test_walk_plans_take_the_plan_of_the_rows_bucket():
    for rows in [*range(1, 5000), 1 << 20, (1 << 20) + 1, 10**9]:
        assert C.batch_bucket(rows) == gpu.bucket_of(rows), rows
    cpu, g, x = _plan_and_rows()
    x = x.repeat(2, 1)  # 40 rows
    plans = C.WalkPlans()
    direct = g.plan(x[:0], cpu._base, False, False, [256, 1, 1, 1])
    staged = g.plan(x[:0], cpu._base, False, False, [256, 1, 1, 1], host_rows=8)
    plans.set(gpu.bucket_of(16), direct)
    plans.set(gpu.bucket_of(16), staged)  # host rows: the staged plan first, while it takes them
    want = g.walk(x, cpu._base, False, False, [256, 1, 1, 1])
    for n in range(0, 41):
        out = plans(x[:n])
        assert (out is not None) == (4 < n <= 16), n
        if out is not None:
            assert torch.equal(out, want[:n]), n
            assert plans.plan_for(x[:n]).staged == (n <= 8), n
        else:
            assert plans.plan_for(x[:n]) is None
    assert plans(x[:8].double()) is None and plans(x[0]) is None
    plans.clear()
    assert plans(x[:8]) is None
    with pytest.raises(RuntimeError, match=r"bucket must be in \[0, 32\)"):
        plans.set(32, g.plan(x[:0], cpu._base, False, False, [256, 1, 1, 1]))


def cuda_backend_on_cpu(model) -> compiled.CompiledForest:
    """A CompiledForest wired as backend 'cuda' (its runner, one-launch kinds and prepared calls) whose
    kernel is pyzero::tree_walk's host twin on CPU tensors: the Python side of Note [Prepared walks]."""
    cf = trees.compile(model, backend="cpu")
    cf.backend = "cuda"
    cf._gpu = cf._kernel = gpu.GpuRunner(cf.forest, cf.device, "cuda", cf._input_dtype, tune=False)
    cf._plans = {kind: C.WalkPlans() for kind in ("raw", "transformed", "proba")}
    cf._launches = {}  # the cpu backend's (its own softmax finish): the cuda backend's from here
    return cf


def _fitted():
    X, y = mixed_data(n=300)
    Xf = np.nan_to_num(X).astype(np.float32)
    return Xf, [
        lgb.LGBMClassifier(n_estimators=5, num_leaves=8, verbose=-1).fit(X, y["bin"]),
        xgb.XGBClassifier(n_estimators=4, max_depth=3).fit(X, y["multi"]),
        RandomForestClassifier(n_estimators=4, max_depth=5, random_state=0).fit(Xf, y["bin"]),
        RandomForestRegressor(n_estimators=4, max_depth=5, random_state=0).fit(Xf, y["reg"]),
        xgb.XGBRegressor(n_estimators=4, max_depth=3).fit(X, y["reg"]),
        IsolationForest(n_estimators=4, random_state=0).fit(Xf),
    ]


def test_compiled_forests_prepare_their_calls_on_rows_taken_as_they_are():
    """The first call of a bucket on rows taken as they are (tensors or numpy) prepares it, staged for at
    most GRAPH_MAX_ROWS rows (as host rows are on a GPU); the next calls go through the plan with the
    outputs as the full path, bit for bit (raw scores: the CPU backend's too), and so do small numpy
    batches that need converting (converted first); tensors that need converting, output kinds that take
    more than one launch, and classifiers' labels take the full path."""
    Xf, models = _fitted()
    for model in models:
        name = type(model).__name__
        cf, full = cuda_backend_on_cpu(model), cuda_backend_on_cpu(model)
        full._plans = {}  # no prepared calls
        ref = trees.compile(model, backend="cpu")
        methods = ["decision_function", "predict"]
        if hasattr(model, "predict_proba"):
            methods.append("predict_proba")
        kinds = {"decision_function": "raw", "predict": "transformed", "predict_proba": "proba"}
        for method in methods:
            plans = cf._plans[kinds[method]]
            expected = method != "predict" or cf.forest.classes is None
            expected = expected and cf._one_launch(kinds[method]) and cf.forest.post_transform != "isolation"
            for n in (1, 3, 16, 50, 200):
                rows = Xf[:n].copy()
                x = torch.as_tensor(rows)
                want = getattr(full, method)(x)
                if method == "decision_function":
                    assert torch.equal(want, ref.decision_function(x)), (name, n)
                for _ in range(2):  # prepares, then takes the plan
                    out = getattr(cf, method)(x)
                    assert torch.equal(torch.as_tensor(out), torch.as_tensor(want)), (name, method, n)
                    assert type(out) is torch.Tensor and out.shape == want.shape
                    out = getattr(cf, method)(rows)
                    assert type(out) is np.ndarray and np.array_equal(out, want.numpy()), (name, method, n)
                assert (plans(x) is not None) == expected, (name, method, n)
                if expected:
                    assert plans.plan_for(x).staged == (n <= gpu.GRAPH_MAX_ROWS), (name, method, n)
                    assert cf._prepared(kinds[method], rows) is not None
                strided = torch.as_tensor(np.repeat(rows, 2, axis=1))[:, ::2]
                frozen = rows.copy()
                frozen.flags.writeable = False
                for other in (x.double(), strided):  # tensors to convert: the full path
                    assert cf._prepared(kinds[method], other) is None
                    assert np.array_equal(np.asarray(getattr(cf, method)(other)), np.asarray(want))
                for other in (
                    rows.astype(np.float64),
                    frozen,
                ):  # small numpy batches: converted, then the plan
                    assert (cf._prepared(kinds[method], other) is not None) == expected, (name, method, n)
                    assert np.array_equal(getattr(cf, method)(other), want.numpy()), (name, method, n)


def test_tuning_drops_the_prepared_calls():
    Xf, models = _fitted()
    cf = cuda_backend_on_cpu(models[0])
    x = torch.as_tensor(Xf[:4])
    cf.predict_proba(x)
    assert cf._plans["proba"](x) is not None
    cf._gpu.timer = lambda fn: (fn(), 1.0)[1]  # every candidate as fast: the first one stays
    cf.tune(Xf, batch_sizes=(4,))
    assert cf._plans["proba"](x) is None
    assert torch.equal(cf.predict_proba(x), trees.compile(models[0], backend="cpu").predict_proba(x))


def test_cpu_backend_prepared_calls_equal_the_full_path():
    """Note [Prepared CPU calls]: the cpu backend prepares every output kind that is the kernel and one
    finish (none for IsolationForest scores, classifiers' labels or the node kernel); rows taken as they
    are go through the plan with the full path's outputs, bit for bit, and so do small numpy batches to
    convert (converted first); tensors to convert, batches the timed kernel choice takes, and kinds
    without a plan take the full path. HistGradientBoosting: float64 rows binned in the plan (Note
    [Binned float64 inputs])."""
    Xf, models = _fitted()
    X64 = mixed_data(n=300, dtype=np.float64)[0]
    y64 = np.nan_to_num(X64[:, 0]) + np.nan_to_num(X64[:, 1]) > 0
    hgb = [
        HistGradientBoostingClassifier(max_iter=5, max_depth=3).fit(X64, y64),
        HistGradientBoostingRegressor(max_iter=5).fit(
            X64, np.nan_to_num(X64[:, 1]) - 0.5 * np.nan_to_num(X64[:, 2])
        ),
    ]
    for data, model in [(Xf, m) for m in models] + [(X64, m) for m in hgb]:
        name = type(model).__name__
        cf, full = trees.compile(model, backend="cpu"), trees.compile(model, backend="cpu")
        full._plans = {}
        classifier = cf.forest.classes is not None
        isolation = cf.forest.post_transform == "isolation"
        want_kinds = set() if isolation else {"raw", "proba" if classifier else "transformed"}
        assert set(cf._plans) == want_kinds, name
        methods = ["decision_function", "predict"] + (["predict_proba"] if classifier else [])
        kinds = {"decision_function": "raw", "predict": "transformed", "predict_proba": "proba"}
        for method in methods:
            for n in (1, 7, 300):
                rows = data[:n].copy()
                x = torch.as_tensor(rows)
                want = getattr(full, method)(x)
                out = getattr(cf, method)(x)
                assert type(out) is torch.Tensor and torch.equal(out, torch.as_tensor(want)), (
                    name,
                    method,
                    n,
                )
                out = getattr(cf, method)(rows)
                assert type(out) is np.ndarray and np.array_equal(out, np.asarray(want)), (name, method, n)
                assert (cf._prepared(kinds[method], rows) is not None) == (kinds[method] in cf._plans)
                strided = torch.as_tensor(np.repeat(rows, 2, axis=1))[:, ::2]
                frozen = rows.copy()
                frozen.flags.writeable = False
                for other in (strided, rows[:, :-1].copy()):  # a tensor to convert, the wrong width
                    assert cf._prepared(kinds[method], other) is None
                planned = kinds[method] in cf._plans and n <= inputs.NUMPY_PREP_MAX_ROWS
                assert (
                    cf._prepared(kinds[method], frozen) is not None
                ) == planned  # converted, then the plan
                for other in (strided, frozen):
                    assert np.array_equal(np.asarray(getattr(cf, method)(other)), np.asarray(want))
    xgb_model = models[1]
    cf = trees.compile(xgb_model)  # XGBoost depth 3: both kernels, large batches timed
    assert isinstance(cf._kernel, fast_cpu.CpuKernelChoice)
    big = np.tile(Xf, (fast_cpu.CPU_TUNE_MIN_ROWS // len(Xf) + 1, 1))
    assert cf._prepared("proba", big[: fast_cpu.CPU_TUNE_MIN_ROWS - 1]) is not None
    assert cf._prepared("proba", big[: fast_cpu.CPU_TUNE_MIN_ROWS]) is None  # the timed choice's
    assert trees.compile(xgb_model, strategy="traverse")._plans == {}  # the node kernel
    reads = trees.compile(models[0], strategy="traverse")  # LightGBM on the node kernel: rows converted
    assert reads._plans == {} and not reads._as_is(torch.as_tensor(Xf[:2]))


def test_cpu_kernel_plans_check_their_inputs():
    Xf, models = _fitted()
    pf = fast_cpu.PerfectForest(trees.compile(models[2]).forest)
    x = torch.as_tensor(Xf[:5])
    base = torch.zeros(pf.values.shape[2], dtype=torch.float64)
    assert torch.equal(
        pf.raw(x, base, False),
        torch.ops.pyzero.tree_perfect_raw(
            pf.meta, pf.threshold, pf.values, pf.values32, pf.leaf_nodes, pf.column_kind, x, base, False
        ),
    )
    with pytest.raises(RuntimeError, match=r"x has 5 features, the forest takes 6"):
        pf.raw(x[:, :5].contiguous(), base, False)
    leaves_only = C.PerfectPlan(pf.meta, pf.threshold, None, None, pf.leaf_nodes, pf.column_kind, 6)
    assert torch.equal(leaves_only.leaves(x), pf.leaves(x).int())
    with pytest.raises(RuntimeError, match=r"this perfect-tree plan has no leaf values \(leaves only\)"):
        leaves_only.raw(x, base, False)
    with pytest.raises(RuntimeError, match="give both values and values32, or neither"):
        C.PerfectPlan(pf.meta, pf.threshold, pf.values, None, pf.leaf_nodes, pf.column_kind, 6)
    with pytest.raises(RuntimeError, match="flat outputs need one output and no pair"):
        C.CpuPredictPlan(pf.plan, base, False, [], True, 10)  # two outputs
    plan = C.CpuPredictPlan(pf.plan, base, False, [], False, 10)
    assert plan(x.double()) is None and plan(torch.as_tensor(Xf[:10])) is None  # dtype; rows >= max_rows
    assert torch.equal(plan(x), pf.raw(x, base, False))
    edges, starts = torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([0, 1, 1, 1, 2, 2, 2])
    binned = C.BinnedPlan(pf.plan, edges, starts)
    x64 = x.double()
    assert torch.equal(
        binned.raw(x64, base, False), pf.raw(torch.ops.pyzero.bin_rows(x64, edges, starts), base, False)
    )
    assert C.CpuPredictPlan(binned, base, False, [], False, 10)(x) is None  # float32 rows: the full path
    with pytest.raises(RuntimeError, match="a binned plan needs a float32 kernel plan"):
        C.BinnedPlan(binned, edges, starts)
    with pytest.raises(
        RuntimeError, match="starts must be a contiguous int64 tensor of n_features \\+ 1 = 7"
    ):
        C.BinnedPlan(pf.plan, edges, starts[:3])
    with pytest.raises(RuntimeError, match=r"x must be a contiguous float64 CPU tensor"):
        binned.raw(x, base, False)


def test_library_finishes_in_python_run_on_the_host_after_the_raw_scores():
    """Note [Host finishes]: on a GPU backend (here the cuda backend's Python side on CPU tensors), the
    forests whose library finishes its sums in numpy or scipy route only their raw scores (graphs,
    streams) and finish them with the library's calls, equal to it bit for bit, from numpy and tensors;
    every other forest finishes on the device."""
    hosted = []
    for model, rows in finish_models():
        cf = cuda_backend_on_cpu(model)
        name = type(model).__name__
        if not compiled.host_finish(cf.forest):
            continue
        routed = []
        route = cf._route
        cf._route = lambda kind, fn, x, route=route, routed=routed: routed.append(kind) or route(kind, fn, x)
        rows = rows[:40]
        methods = [
            m for m in ("predict_proba", "score_samples", "decision_function", "predict") if hasattr(model, m)
        ]
        for method in methods:
            want = np.asarray(getattr(model, method)(rows))
            got = getattr(cf, method)(rows)
            assert type(got) is np.ndarray and np.array_equal(got, want), (name, method)
            x = torch.as_tensor(rows, dtype=cf._input_dtype)
            got = getattr(cf, method)(x)
            assert type(got) is torch.Tensor and np.array_equal(got.numpy(), want), (name, method)
        assert set(routed) == {"raw"}, (name, routed)
        hosted.append(name)
    # scikit-learn's multiclass GradientBoosting and HistGradientBoosting, its Poisson HistGradientBoosting,
    # IsolationForest, XGBoost's multi:softmax, LightGBM's cross_entropy_lambda
    assert sorted(hosted) == sorted(
        [
            "GradientBoostingClassifier",
            "HistGradientBoostingClassifier",
            "HistGradientBoostingRegressor",
            "IsolationForest",
            "LGBMRegressor",
            "XGBClassifier",
        ]
    ), hosted
