"""On a CUDA device: the portable torch strategies and the CUDA kernel (every layout and mapping) give the
CPU results bit for bit at every batch size (tensors in and out stay on the GPU); the CUDA kernel agrees
with every native library on adversarial rows; small batches through CUDA graphs from numpy, pinned and
device inputs; the autotuner's disk cache. Categorical forests included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn import ensemble

from pyzero import trees
from pyzero.trees import gpu_layout, torch_strategies
from tests.trees.helpers import assert_binary_pair, finish_models, libm_exp_samples

pytestmark = pytest.mark.cuda


def fitted_models():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((800, 6)).astype(np.float32)
    X[:, 0] = rng.integers(0, 12, 800)
    X[rng.random(X.shape) < 0.05] = np.nan
    Xf = np.nan_to_num(X)
    y = (np.sin(Xf[:, 0]) + Xf[:, 1] > 0).astype(int)
    out = [
        ensemble.RandomForestClassifier(20, max_depth=8, random_state=0).fit(X, y),
        ensemble.GradientBoostingClassifier(n_estimators=20, max_depth=3).fit(Xf, y),
        ensemble.HistGradientBoostingClassifier(max_iter=20, categorical_features=[0]).fit(X, y),
    ]
    try:
        import xgboost as xgb

        out.append(xgb.XGBClassifier(n_estimators=20, max_depth=6).fit(X, y))
        out.append(
            xgb.XGBClassifier(
                n_estimators=20, max_depth=4, enable_categorical=True, feature_types=["c"] + ["q"] * 5
            ).fit(X, y)
        )
    except ImportError:
        pass
    try:
        import lightgbm as lgb

        out.append(lgb.LGBMClassifier(n_estimators=20, verbose=-1).fit(X, y, categorical_feature=[0]))
        out.append(lgb.LGBMClassifier(n_estimators=20, verbose=-1, zero_as_missing=True).fit(Xf, y))
    except ImportError:
        pass
    return X, out


def test_torch_strategies_on_cuda_equal_cpu():
    X, models = fitted_models()
    for model in models:
        cpu = trees.compile(model, backend="torch", strategy="traverse")
        dtype = cpu._input_dtype
        ref = cpu.predict_proba(torch.as_tensor(X, dtype=dtype))
        ref_raw = cpu.decision_function(torch.as_tensor(X, dtype=dtype))
        ref_leaves = cpu.apply(torch.as_tensor(X, dtype=dtype))
        fits = torch_strategies.eligible(cpu.forest)
        for strategy in ("auto", "traverse", "perfect", "gemm"):
            if strategy != "auto" and not fits[strategy]:
                continue
            cf = trees.compile(model, backend="torch", strategy=strategy, device="cuda")
            x = torch.as_tensor(X, dtype=dtype, device="cuda")
            out = cf.predict_proba(x)
            assert out.device.type == "cuda"
            # raw scores bit for bit up to float64 summation order; float32 transforms (XGBoost) may
            # round differently in the GPU's math library: within the 1e-6 bound.
            torch.testing.assert_close(cf.decision_function(x).cpu(), ref_raw, atol=1e-12, rtol=0)
            torch.testing.assert_close(out.cpu(), ref, atol=1e-6, rtol=0)
            assert_binary_pair(out, cf.forest, strategy)
            assert torch.equal(cf.apply(x).cpu(), ref_leaves), (type(model).__name__, strategy)
            np.testing.assert_allclose(cf.predict_proba(X), ref.numpy(), atol=1e-6, rtol=0)


# Batch sizes of the CUDA kernel tests: one row, odd, one graph bucket's worth, many blocks.
CUDA_BATCHES = (1, 7, 128, 10_000)
# Kernel configurations every layout is run with: a thread per row (with and without trees in flight),
# trees spread over lanes, one row per block.
CONFIGS = (
    {"threads": 256, "lanes": 1, "ilp": 1},
    {"threads": 128, "lanes": 1, "ilp": 4},
    {"threads": 256, "lanes": 8, "ilp": 2},
    {"threads": 256, "lanes": 256, "ilp": 4},
    {"threads": 512, "lanes": 32, "ilp": 1},
)
# The perfect layout also runs with its trees staged in shared memory, one and three at a time.
TREE_CHUNK_CONFIGS = (
    {"threads": 256, "lanes": 1, "ilp": 4, "tree_chunk": 1},
    {"threads": 128, "lanes": 1, "ilp": 2, "tree_chunk": 3},
)
# The perfect-tiled layout also runs tiled (Note [Tiled walk]), with 1, 2 and 4 rows in flight.
TILED_CONFIGS = (
    {"threads": 128, "ilp": 1, "tiled": True},
    {"threads": 256, "ilp": 2, "tiled": True},
    {"threads": 512, "ilp": 4, "tiled": True},
)


def layout_configs(layout: str) -> tuple[dict, ...]:
    """The configurations the GPU tests run on `layout`."""
    if layout in gpu_layout.CHUNKABLE_LAYOUTS:
        return CONFIGS + TREE_CHUNK_CONFIGS
    return CONFIGS + (TILED_CONFIGS if layout == "perfect-tiled" else ())


def more_models():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((600, 5)).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    Xf = np.nan_to_num(X)
    y3 = np.digitize(Xf[:, 0], [-0.5, 0.5])
    out = [
        ensemble.RandomForestRegressor(10, random_state=0).fit(Xf, Xf[:, 1]),  # deep: node layouts only
        ensemble.ExtraTreesClassifier(8, max_depth=6, random_state=0).fit(Xf, y3),  # 3 outputs, mean
        ensemble.IsolationForest(n_estimators=10, random_state=0).fit(Xf),
    ]
    try:
        import xgboost as xgb

        out.append(xgb.XGBClassifier(n_estimators=6, max_depth=5).fit(X, y3))  # softmax, a tree per class
    except ImportError:
        pass
    return X, out


def test_tiled_walks_over_several_tiles_equal_the_cpu_kernel():
    """Note [Tiled walk] on the GPU: 70 trees (two whole tiles and a partial one), float32 sums
    (XGBoost) and double sums (LightGBM); raw scores and leaves bit for bit at 1, 1000 (a partial block)
    and 100k rows, probabilities through the fused finish within float32 rounding of the CPU's."""
    import lightgbm as lgb
    import xgboost as xgb

    rng = np.random.default_rng(3)
    X = rng.standard_normal((800, 6)).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    y = (np.nan_to_num(X[:, 1]) + np.nan_to_num(X[:, 2]) > 0).astype(int)
    big = X[rng.integers(0, len(X), 100_000)]
    for model in (
        xgb.XGBClassifier(n_estimators=70, max_depth=6).fit(X, y),
        lgb.LGBMClassifier(n_estimators=70, num_leaves=40, max_depth=8, verbose=-1).fit(X, y),
    ):
        cpu = trees.compile(model, backend="cpu", strategy="traverse")
        ref_raw, ref_leaves = cpu.decision_function(big), cpu.apply(big)
        ref_proba = cpu.predict_proba(big)
        for cfg in TILED_CONFIGS:
            try:
                gpu = trees.compile(
                    model, backend="cuda", device="cuda", tune={"layout": "perfect-tiled", **cfg}
                )
            except ValueError as e:  # 512 threads with double sums: more than an H100's shared memory
                assert "bytes of shared memory" in str(e) and cfg["threads"] == 512, e
                continue
            xd = torch.as_tensor(big, device="cuda")
            for n in (1, 1000, 100_000):
                assert np.array_equal(gpu.decision_function(xd[:n]).cpu().numpy(), ref_raw[:n]), (cfg, n)
                assert np.array_equal(gpu.apply(xd[:n]).cpu().numpy(), ref_leaves[:n]), (cfg, n)
            proba = gpu.predict_proba(big)
            np.testing.assert_allclose(proba, ref_proba, atol=1e-6, rtol=0)
            assert_binary_pair(proba, cpu.forest, cfg)


def test_cuda_kernel_every_layout_and_config_equals_the_cpu_kernel_bit_for_bit():
    X, models = fitted_models()
    X2, models2 = more_models()
    rng = np.random.default_rng(1)
    for data, model in [(X, m) for m in models] + [(X2, m) for m in models2]:
        big = data[rng.integers(0, len(data), max(CUDA_BATCHES))]
        cpu = trees.compile(model, backend="cpu", strategy="traverse")
        name = type(model).__name__
        dtype = cpu._input_dtype
        # the kernel's output (raw scores) bit for bit; post-transforms use the GPU's math library
        ref_raw, ref_leaves = cpu._raw(cpu._input(big)[0]).numpy(), cpu.apply(big)
        layouts = trees.compile(model, backend="cuda", device="cuda", tune=False)._gpu.eligible
        assert "wide" in layouts
        for layout in layouts:
            for cfg in layout_configs(layout):
                try:
                    gpu = trees.compile(model, backend="cuda", device="cuda", tune={"layout": layout, **cfg})
                except ValueError as e:  # a deep tree's chunk or tile that shared memory cannot hold
                    assert "bytes of shared memory" in str(e), e
                    continue
                for n in CUDA_BATCHES:  # each row gets the same bits at every batch size
                    x = torch.as_tensor(big[:n], dtype=dtype, device="cuda")
                    assert np.array_equal(gpu._raw(gpu._input(x)[0]).cpu().numpy(), ref_raw[:n]), (
                        name,
                        layout,
                        cfg,
                        n,
                    )
                    assert np.array_equal(gpu.apply(x).cpu().numpy(), ref_leaves[:n]), (name, layout, cfg, n)


def test_row_slots_on_the_gpu_with_rows_staged_above_48_kb():
    """Note [Row slots] on the GPU: perfect layouts of one, three and two row copies (the last of 40
    features: 256 staged rows take 83 KB of shared memory, opted in up to kStageMaxSharedBytes) give the
    node kernel's raw scores and leaves bit for bit."""
    from pyzero.trees import compiled
    from tests.trees.test_gpu_layouts import _row_slot_forests

    for name, f, base, rows, _ in _row_slot_forests():
        node = compiled.CompiledForest(f, torch.device("cpu"), "traverse", "cpu")
        x = torch.as_tensor(rows)
        f32 = f.extra.get("accumulate") == "float32"
        ref_raw, ref_leaves = node._kernel.raw(x, base, f32), node._kernel.leaves(x)
        xd, bd = x.cuda(), base.cuda()
        for lay in gpu_layout.PERFECT_LAYOUTS:
            g = gpu_layout.GpuLayout(f, lay, torch.float32, torch.device("cuda"))
            for cfg in ([256, 1, 2, 1], [128, 1, 1, 1], [256, 1, 2, 0], [256, 8, 2, 1]):
                assert torch.equal(g.walk(xd, bd, f32, False, cfg).cpu(), ref_raw), (name, lay, cfg)
                leaves = g.walk(xd, bd, False, True, cfg).cpu().long()
                assert torch.equal(leaves, ref_leaves), (name, lay, cfg)


def test_a_million_rows_and_every_batch_size_give_the_same_bits():
    X, models = fitted_models()
    model = models[3] if len(models) > 3 else models[0]  # XGBoost when installed
    rng = np.random.default_rng(5)
    big = X[rng.integers(0, len(X), 1_000_000)]
    cpu = trees.compile(model, backend="cpu", strategy="traverse")
    ref = cpu.decision_function(big)
    gpu = trees.compile(model, device="cuda")
    assert gpu.backend == "cuda"  # backend auto on a CUDA device
    xd = torch.as_tensor(big, device="cuda", dtype=cpu._input_dtype)
    for n in (1, 7, 128, 10_000, 1_000_000):
        assert np.array_equal(gpu.decision_function(xd[:n]).cpu().numpy(), ref[:n]), n
    np.testing.assert_allclose(
        gpu.predict_proba(big[:100_000]), cpu.predict_proba(big[:100_000]), atol=1e-6, rtol=0
    )


def test_cuda_kernel_agrees_with_the_native_libraries_on_adversarial_rows():
    X, models = fitted_models()
    X2, models2 = more_models()
    for data, model in [(X, m) for m in models] + [(X2, m) for m in models2]:
        for strategy in ("auto", "traverse"):
            gpu = trees.compile(model, backend="cuda", device="cuda", strategy=strategy)
            report = trees.verify(model, gpu, data)
            assert report["ok"], (type(model).__name__, strategy, report)


def test_cuda_libm_exp_equals_the_host_build():
    """Note [Library exp]: the device build of libm_expf and libm_exp equals the host build bit for bit
    (test_backends and tests/cpp/test_libm_exp.cpp hold that one to the host's libm)."""
    for dtype in (torch.float32, torch.float64):
        x = libm_exp_samples(dtype, 1 << 20, seed=1)
        want = torch.ops.pyzero.libm_exp(x)
        got = torch.ops.pyzero.libm_exp(x.cuda()).cpu()
        same = (got == want) | (got.isnan() & want.isnan())
        assert bool(same.all()), (dtype, x[~same][:5], got[~same][:5], want[~same][:5])


def test_cuda_outputs_equal_the_native_libraries_bit_for_bit():
    """Note [Library exp] and Note [Fused finish] on the GPU: where the CUDA kernel finishes the sums
    (XGBoost's float32 sigmoid and exp, LightGBM's and scikit-learn's double ones, the forests' means,
    the binary pair; XGBoost's and LightGBM's softmax in finish_sums after the kernel), and where the
    host finishes them as the library does (Note [Host finishes]: scikit-learn's softmax and numpy exp,
    IsolationForest's scores, XGBoost's scipy softmax), probabilities, scores and predictions equal the
    native libraries' bit for bit: whole, in batches of 1 and 7 rows (graphs, prepared calls), from numpy
    and device rows."""
    checked = []
    for model, rows in finish_models():
        method = next(m for m in ("predict_proba", "score_samples", "predict") if hasattr(model, m))
        gpu = trees.compile(model, device="cuda")
        name = type(model).__name__
        want = getattr(model, method)(rows).astype(np.float64)
        assert np.array_equal(getattr(gpu, method)(rows), want), name
        xd = torch.as_tensor(rows, dtype=gpu._input_dtype, device="cuda")
        got = getattr(gpu, method)(xd)
        assert got.device.type == "cuda" and np.array_equal(got.cpu().numpy(), want), name
        for size in (1, 7):
            parts = [getattr(gpu, method)(rows[i : i + size]) for i in range(0, 70, size)]
            assert np.array_equal(np.concatenate(parts), want[:70]), (name, size)
        checked.append(name)
    assert len(checked) == 20, checked


def test_finish_sums_on_the_device_equals_the_host():
    """Note [Fused finish] after the kernel (softmax on the GPU, finish_sums): every finish, float32 and
    double, on CUDA tensors equals the host's bit for bit; inputs on two devices are refused."""
    from pyzero import _native

    C = _native.require("finish_sums")
    rng = np.random.default_rng(5)
    sums = torch.from_numpy(rng.normal(0, 4, (5000, 3)))
    sums[:7] = torch.tensor(
        [[0.0, -0.0, 1e-300], [90.0, -90.0, 0.0], [700.0, 1.0, -750.0]] + [[1.0, 2.0, 3.0]] * 4
    )
    base = torch.tensor([0.5, -0.25, 1.0], dtype=torch.float64)
    finishes = [(0.0, 1.0, 7.0, 0.0), (1.0, 1.0, 0.0, 0.0), (1.0, 0.7, 0.0, 0.0), (2.0, 1.0, 0.0, 0.0)]
    finishes.append((trees.compiled.FINISH_SOFTMAX, 1.0, 0.0, 0.0))
    for finish in finishes:
        for f32 in (False, True):
            want = C.finish_sums(sums, base, list(finish), f32)
            got = C.finish_sums(sums.cuda(), base.cuda(), list(finish), f32)
            assert got.device.type == "cuda" and torch.equal(got.cpu(), want), (finish, f32)
    one = sums[:, :1].contiguous()
    want = C.finish_sums(one, base[:1], [1.0, 1.0, 0.0, 1.0], True)
    assert torch.equal(C.finish_sums(one.cuda(), base[:1].cuda(), [1.0, 1.0, 0.0, 1.0], True).cpu(), want)
    with pytest.raises(RuntimeError, match="base must hold one float64 per output, on raw's device"):
        C.finish_sums(sums.cuda(), base, [1.0, 1.0, 0.0, 0.0], True)


def test_small_batches_replay_graphs_from_numpy_pinned_and_device_inputs():
    X, models = fitted_models()
    rng = np.random.default_rng(7)
    for model in models[:4]:
        cpu = trees.compile(model, backend="cpu", strategy="traverse")
        gpu = trees.compile(model, device="cuda")
        gpu._plans = {}  # the graph path, which prepared calls (Note [Prepared walks]) would skip
        dtype = cpu._input_dtype
        for n in (1, 3, 16, 100, 128, 1, 3):  # the repeats reuse the captured graphs with new rows
            rows = X[rng.integers(0, len(X), n)]
            ref_raw, ref_p = cpu.decision_function(rows), cpu.predict_proba(rows)
            assert np.array_equal(gpu.decision_function(rows), ref_raw), (type(model).__name__, n)
            np.testing.assert_allclose(gpu.predict_proba(rows), ref_p, atol=1e-6, rtol=0)
            assert np.array_equal(gpu.predict(rows), cpu.predict(rows))
            pinned = torch.as_tensor(rows, dtype=dtype).pin_memory()
            out = gpu.decision_function(pinned)
            assert out.device.type == "cpu" and np.array_equal(out.numpy(), ref_raw)
            dev = gpu.decision_function(pinned.cuda())
            assert dev.device.type == "cuda" and np.array_equal(dev.cpu().numpy(), ref_raw)
            assert np.array_equal(gpu.apply(rows), cpu.apply(rows))
        assert len(gpu._graphs._graphs) >= 4
        # one-launch kinds take device rows directly; as other kinds, they go through the timed choice
        # between the graph and the direct call, then through the path the timing did not choose
        gpu._one_launch_kinds = dict.fromkeys(("raw", "transformed", "proba"), False)
        for flip in (False, True):
            if flip:
                direct = gpu._graphs._direct
                assert direct
                for key in direct:
                    direct[key] = not direct[key]
            for n in (1, 3, 16, 100, 128):
                rows = X[rng.integers(0, len(X), n)]
                dev = gpu.decision_function(torch.as_tensor(rows, dtype=dtype, device="cuda"))
                assert np.array_equal(dev.cpu().numpy(), cpu.decision_function(rows)), (n, flip)


def test_prepared_calls_give_the_same_bits_from_device_and_host_rows():
    """Note [Prepared walks]: after the first call of a bucket, later calls (new rows of the same bucket)
    take its prepared kernel call: device rows directly, numpy and CPU tensors (pageable or pinned) of
    at most GRAPH_MAX_ROWS rows staged; CPU tensors of any size are taken, their outputs on the host;
    outputs equal the CPU kernel's (raw scores bit for bit) and the full path's; converted inputs and
    calls inside a CUDA graph capture give the same."""
    from pyzero.trees import gpu as gpu_mod

    X, models = fitted_models()
    rng = np.random.default_rng(2)
    for model in models:
        name = type(model).__name__
        cpu = trees.compile(model, backend="cpu", strategy="traverse")
        gpu = trees.compile(model, device="cuda")
        full = trees.compile(model, device="cuda")
        full._plans = {}  # no prepared calls
        dtype = cpu._input_dtype
        for n in (1, 3, 16, 100, 1000, 1, 3, 16, 100, 1000):
            rows = X[rng.integers(0, len(X), n)].astype(cpu._input_dtype_np)
            host = torch.as_tensor(rows)
            inputs = {"device": host.cuda(), "numpy": rows, "host": host, "pinned": host.pin_memory()}
            for method, kind in (("decision_function", "raw"), ("predict_proba", "proba")):
                want = getattr(cpu, method)(rows)
                want_full = getattr(full, method)(inputs["device"]).cpu().numpy()
                for where, x in inputs.items():
                    out = getattr(gpu, method)(x)
                    assert type(out) is (np.ndarray if where == "numpy" else torch.Tensor), (name, where)
                    if where != "numpy":  # host rows of any size give host outputs
                        assert out.device.type == ("cuda" if where == "device" else "cpu"), (name, where, n)
                    got = out if where == "numpy" else out.cpu().numpy()
                    assert got.shape == want.shape and np.array_equal(got, want_full), (
                        name,
                        method,
                        where,
                        n,
                    )
                    if method == "decision_function":
                        assert np.array_equal(got, want), (name, method, where, n)
                    else:
                        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
                    plan = gpu._plans[kind].plan_for(host if where == "numpy" else x)
                    staged = where != "device" and n <= gpu_mod.GRAPH_MAX_ROWS
                    # encoded categories: no GPU plans (Note [Encoded categories])
                    plain = gpu._plain_inputs and not gpu._encoded_inputs
                    taken = plain and gpu._one_launch(kind) and (where == "device" or staged)
                    assert (plan is not None) == taken, (name, method, where, n)
                    assert plan is None or plan.staged == staged, (name, method, where, n)
        dev = torch.as_tensor(X[:16], dtype=dtype, device="cuda")
        want = gpu.decision_function(dev)
        assert torch.equal(gpu.decision_function(dev.double()), want), name
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = gpu.decision_function(dev)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, want), name


def test_large_host_batches_stream_through_pinned_chunks(monkeypatch):
    """Note [Streamed host batches]: numpy and pinned inputs of many chunks (the last one partial) give
    the CPU kernel's raw scores bit for bit, its probabilities, labels and leaves."""
    from pyzero.trees import gpu as gpu_mod

    X, models = fitted_models()
    rng = np.random.default_rng(9)
    rows = X[rng.integers(0, len(X), gpu_mod.STREAM_MIN_ROWS + 12_345)]
    monkeypatch.setattr(gpu_mod, "STREAM_CHUNK_BYTES", 1 << 16)  # chunks of 2730 rows: 53 of them
    for model in models[:4]:
        cpu = trees.compile(model, backend="cpu", strategy="traverse")
        gpu = trees.compile(model, device="cuda")
        assert gpu._streamed(gpu._input(rows)[0])
        ref_raw = cpu.decision_function(rows)
        for _ in range(2):  # the second call reuses the staging buffers
            assert np.array_equal(gpu.decision_function(rows), ref_raw), type(model).__name__
        proba = gpu.predict_proba(rows)
        np.testing.assert_allclose(proba, cpu.predict_proba(rows), atol=1e-6, rtol=0)
        assert_binary_pair(proba, cpu.forest, type(model).__name__)
        assert np.array_equal(gpu.predict(rows), cpu.predict(rows))
        pinned = torch.as_tensor(rows, dtype=cpu._input_dtype).pin_memory()
        assert np.array_equal(gpu.decision_function(pinned).numpy(), ref_raw)
        assert np.array_equal(gpu.apply(rows[:1000]), cpu.apply(rows[:1000]))


def test_autotuning_caches_its_choice_on_disk(tmp_path, monkeypatch):
    from pyzero.trees import gpu as gpu_mod

    monkeypatch.setenv("PYZERO_CACHE_DIR", str(tmp_path))
    X, models = fitted_models()
    model = models[0]
    cf = trees.compile(model, device="cuda")
    cf.predict_proba(X)  # 800 rows: bucket 5, tuned on these rows
    cfg = cf.kernel_config(len(X))
    assert cfg.layout in cf._gpu.eligible
    entries = json.loads((tmp_path / gpu_mod.CACHE_FILE).read_text())["entries"]
    assert any(k.endswith("|5") for k in entries)

    def no_timing(*args, **kwargs):
        raise AssertionError("the cached choice should have been used")

    monkeypatch.setattr(gpu_mod.GpuRunner, "_tune", no_timing)
    again = trees.compile(model, device="cuda")
    assert again.kernel_config(len(X)) == gpu_mod.KernelConfig(
        **next(v for k, v in entries.items() if k.endswith("|5"))["config"]
    )
    monkeypatch.undo()
    monkeypatch.setenv("PYZERO_CACHE_DIR", str(tmp_path))
    chosen = cf.tune(X, batch_sizes=(1, 100))
    assert set(chosen) == {1, 100} and all(c.layout in cf._gpu.eligible for c in chosen.values())


def test_tree_predict_cuda_function():
    import pyzero

    X, models = fitted_models()
    cpu = trees.compile(models[0], backend="cpu", strategy="traverse")
    x7 = torch.as_tensor(X[:7], dtype=cpu._input_dtype)
    assert torch.equal(pyzero.tree_predict_cuda(cpu.forest, x7.cuda()).cpu(), cpu._raw(cpu._input(x7)[0]))
    leaves = pyzero.tree_predict_cuda(cpu.forest, x7.cuda(), leaves=True)
    assert torch.equal(leaves.cpu(), torch.as_tensor(cpu.apply(X[:7])))
