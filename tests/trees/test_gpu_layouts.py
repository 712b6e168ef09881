"""The GPU layouts (Note [GPU layouts]) through pyzero::tree_walk's host twin, which shares every decoding
function with the CUDA kernel, against the C++ node kernel bit for bit on the converters' models with
adversarial rows; layout eligibility; the op's errors; and the autotuner's parts that need no GPU."""

from __future__ import annotations

import copy
import json

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import torch
import xgboost as xgb
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.tree import DecisionTreeRegressor

from pyzero import trees
from pyzero.trees import compiled, gpu, gpu_layout
from pyzero.trees import forest as forest_mod
from tests.trees.helpers import mixed_data


def _models():
    X, y = mixed_data(n=400)
    Xf = np.nan_to_num(X)
    rng = np.random.default_rng(3)
    cats = pd.DataFrame({"a": pd.Categorical(rng.integers(0, 40, 400)), "b": Xf[:, 0], "c": Xf[:, 1]})
    yc = (cats["a"].cat.codes.to_numpy() % 3) + cats["b"].to_numpy()
    Xc = X.copy()
    Xc[:, 0] = rng.integers(0, 12, 400)
    return [
        ("rf", X, RandomForestClassifier(n_estimators=8, max_depth=7, random_state=0).fit(X, y["multi"])),
        ("extra trees deep", Xf, ExtraTreesRegressor(n_estimators=3, random_state=0).fit(Xf, y["reg"])),
        ("gbc", Xf, GradientBoostingClassifier(n_estimators=6, max_depth=3).fit(Xf, y["bin"])),
        (
            "hgb float64 cat",
            Xc,
            HistGradientBoostingClassifier(max_iter=6, categorical_features=[0]).fit(Xc, y["bin"]),
        ),
        ("isolation", Xf, IsolationForest(n_estimators=5, random_state=0).fit(Xf)),
        ("xgb multiclass", X, xgb.XGBClassifier(n_estimators=4, max_depth=4).fit(X, y["multi"])),
        (
            "xgb categorical",
            cats,
            xgb.XGBRegressor(n_estimators=5, max_depth=4, enable_categorical=True, tree_method="hist").fit(
                cats, yc
            ),
        ),
        ("lgb nan", X, lgb.LGBMClassifier(n_estimators=6, num_leaves=12, verbose=-1).fit(X, y["bin"])),
        (
            "lgb zero as missing",
            Xf,
            lgb.LGBMRegressor(n_estimators=6, num_leaves=8, zero_as_missing=True, verbose=-1).fit(
                Xf, y["reg"]
            ),
        ),
        (
            "lgb categorical",
            cats,
            lgb.LGBMRegressor(n_estimators=6, num_leaves=8, min_child_samples=5, verbose=-1).fit(cats, yc),
        ),
    ]


@pytest.mark.parametrize("case", range(10))
def test_every_layout_equals_the_node_kernel_bit_for_bit(case):
    name, X, model = _models()[case]
    cpu = trees.compile(model, backend="cpu", strategy="traverse")
    f = cpu.forest
    rows, _ = trees.compiled.verification_rows(model, cpu, X)
    x, _ = cpu._input(rows)
    f32 = f.extra.get("accumulate") == "float32"
    ref_raw = cpu._kernel.raw(x, cpu._base, f32)
    ref_leaves = cpu._kernel.leaves(x)
    fitted = [lay for lay in gpu_layout.LAYOUTS if gpu_layout.why_not(f, lay, cpu._input_dtype) is None]
    assert {"compact-bfs", "wide"} <= set(fitted), (name, fitted)
    for lay in fitted:
        g = gpu_layout.GpuLayout(f, lay, cpu._input_dtype, torch.device("cpu"))
        assert torch.equal(g.walk(x, cpu._base, f32, False, [256, 1, 1, 1]), ref_raw), (name, lay)
        assert torch.equal(g.walk(x, cpu._base, False, True, [256, 1, 1, 1]).long(), ref_leaves), (name, lay)


# [threads, lanes, ilp, stage, tree_chunk]: a thread per row (whole and partial blocks), lanes with 1, 2
# and 4 trees in flight, a block per row, staged and unstaged rows; perfect layout: trees staged in
# chunks of 1, 3 (the last chunk partial) and more than the forest holds.
EMULATED_CONFIGS = (
    [32, 1, 1, 1, 0],
    [64, 1, 4, 0, 0],
    [64, 8, 2, 1, 0],
    [128, 32, 4, 1, 0],
    [64, 64, 1, 0, 0],
    [256, 16, 2, 1, 0],
)
EMULATED_TREE_CHUNKS = ([32, 1, 1, 1, 1], [64, 1, 2, 0, 3], [32, 1, 4, 1, 1000])
# Note [Tiled walk] (the perfect-tiled layout): a partial second block, and one partial block of 64.
EMULATED_TILED = ([32, 1, 1, 1, 0, 1], [64, 1, 2, 1, 0, 1], [32, 1, 4, 1, 0, 1])
EMULATED_ROWS = 40


@pytest.mark.parametrize("case", range(10))
def test_the_cuda_kernel_emulated_on_the_cpu_equals_the_host_twin(case):
    """Note [Kernel emulation]: the CUDA kernel's own code on every layout and configuration gives the
    host twin's raw scores and leaves bit for bit (summation order, chunking, row staging)."""
    name, X, model = _models()[case]
    cpu = trees.compile(model, backend="cpu", strategy="traverse")
    f = cpu.forest
    rows, _ = trees.compiled.verification_rows(model, cpu, X)
    x, _ = cpu._input(rows)
    x = x[:EMULATED_ROWS].contiguous()
    f32 = f.extra.get("accumulate") == "float32"
    for lay in gpu_layout.LAYOUTS:
        if gpu_layout.why_not(f, lay, cpu._input_dtype) is not None:
            continue
        g = gpu_layout.GpuLayout(f, lay, cpu._input_dtype, torch.device("cpu"))
        ref_raw = g.walk(x, cpu._base, f32, False, [32, 1, 1, 1])
        ref_leaves = g.walk(x, cpu._base, False, True, [32, 1, 1, 1])
        extra = EMULATED_TREE_CHUNKS if lay in gpu_layout.CHUNKABLE_LAYOUTS else ()
        extra = EMULATED_TILED if lay == "perfect-tiled" else extra
        for cfg in EMULATED_CONFIGS + extra:
            tiled = (g.copies * f.n_features, f.max_depth) if lay == "perfect-tiled" else None
            shape = gpu.ForestShape(f.n_outputs, f32, g.tree_shape, f.n_trees, tiled)
            kc = gpu.KernelConfig(lay, *cfg[:3], tree_chunk=cfg[4], tiled=len(cfg) > 5 and bool(cfg[5]))
            if gpu.cuda_shared_bytes(kc, shape) > gpu.cuda_max_shared_bytes(
                kc
            ):  # a deep tree's chunk of 1000
                continue
            raw = g.walk(x, cpu._base, f32, False, cfg, emulate=True)
            assert torch.equal(raw, ref_raw), (name, lay, cfg)
            assert torch.equal(g.walk(x, cpu._base, False, True, cfg, emulate=True), ref_leaves), (
                name,
                lay,
                cfg,
            )


def _row_slot_forests():
    """(name, forest, base, rows, copies) whose perfect layouts read one, three and two row copies (Note
    [Row slots] in csrc/trees/tree_walk.h), with rows full of NaN, +-inf and +-0: LightGBM trained
    without missing values (its columns read NaN as 0: every node copy 0); an XGBoost forest (x < t,
    learned default directions) edited to split at -inf (x < -inf: only a NaN goes left, and only by
    default: copy 2) and +inf, its default directions flipped at every other split; XGBoost on 40
    features (256 staged rows of two copies: 83 KB of shared memory, over the 48 KB a launch gets
    without opting in)."""
    X, y = mixed_data(n=400)
    Xf = np.nan_to_num(X)
    rng = np.random.default_rng(11)
    rows = np.concatenate([Xf[:60], X[:60]]).astype(np.float32)
    specials = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0], dtype=np.float32)
    pick = rng.random(rows.shape) < 0.4
    rows[pick] = rng.choice(specials, int(pick.sum()))
    lgbm = lgb.LGBMRegressor(n_estimators=6, num_leaves=12, verbose=-1).fit(Xf, y["reg"])
    lgb_cpu = trees.compile(lgbm, backend="cpu", strategy="traverse")
    booster = xgb.XGBRegressor(n_estimators=6, max_depth=4).fit(X, y["reg"])
    xgb_cpu = trees.compile(booster, backend="cpu", strategy="traverse")
    f = copy.deepcopy(xgb_cpu.forest)
    split = np.flatnonzero(f.feature >= 0)
    for nodes, t in ((split[::3], -np.inf), (split[1::5], np.inf)):
        f.threshold32[nodes], f.threshold64[nodes] = t, t
    f.default_left[split[::2]] = ~f.default_left[split[::2]]
    X40 = rng.standard_normal((300, 40)).astype(np.float32)
    X40[rng.random(X40.shape) < 0.1] = np.nan
    wide = xgb.XGBRegressor(n_estimators=8, max_depth=5).fit(X40, np.nan_to_num(X40[:, :3]).sum(axis=1))
    wide_cpu = trees.compile(wide, backend="cpu", strategy="traverse")
    return [
        ("lgb no missing values", lgb_cpu.forest, lgb_cpu._base, rows, 1),
        ("xgb split at -inf", f, xgb_cpu._base, rows, 3),
        ("xgb 40 features", wide_cpu.forest, wide_cpu._base, X40, 2),
    ]


# Note [Row slots]: 256 rows a block, a thread each (the 40-feature forest's rows take 83 KB staged).
ROW_SLOT_CONFIGS = ([256, 1, 2, 1, 0], [256, 1, 2, 0, 0])


@pytest.mark.parametrize("case", range(3))
def test_row_slots_keep_every_default_direction(case):
    """Note [Row slots]: perfect layouts of one, three and two row copies give the node kernel's raw
    scores and leaves bit for bit, through the host twin and the emulated kernel (staged and unstaged
    rows, a thread per row and lanes, tree chunks, tiles)."""
    name, f, base, rows, copies = _row_slot_forests()[case]
    node = compiled.CompiledForest(f, torch.device("cpu"), "traverse", "cpu")
    x = torch.as_tensor(rows)
    f32 = f.extra.get("accumulate") == "float32"
    ref_raw, ref_leaves = node._kernel.raw(x, base, f32), node._kernel.leaves(x)
    for lay in gpu_layout.PERFECT_LAYOUTS:
        g = gpu_layout.GpuLayout(f, lay, torch.float32, torch.device("cpu"))
        assert g.copies == copies, (name, lay)
        assert torch.equal(g.walk(x, base, f32, False, [32, 1, 1, 1]), ref_raw), (name, lay)
        assert torch.equal(g.walk(x, base, False, True, [32, 1, 1, 1]).long(), ref_leaves), (name, lay)
        extra = EMULATED_TREE_CHUNKS if lay in gpu_layout.CHUNKABLE_LAYOUTS else EMULATED_TILED
        for cfg in EMULATED_CONFIGS + extra + ROW_SLOT_CONFIGS:
            assert torch.equal(g.walk(x, base, f32, False, cfg, emulate=True), ref_raw), (name, lay, cfg)
            leaves = g.walk(x, base, False, True, cfg, emulate=True).long()
            assert torch.equal(leaves, ref_leaves), (name, lay, cfg)
    g = gpu_layout.GpuLayout(f, "perfect", torch.float32, torch.device("cpu"))
    if copies > 1:
        wider = torch.cat([x, x[:, :1]], dim=1)
        with pytest.raises(RuntimeError, match=f"layout of {copies} row copies takes x with exactly"):
            g.walk(wider, base, f32, False, [32, 1, 1, 1])
    with pytest.raises(RuntimeError, match=r"copies must be 1, or 1 to 3 for a perfect layout"):
        torch.ops.pyzero.tree_walk(
            0, *_forest_args(g), f.n_features, 4, x, base, f32, False, [32, 1, 1, 1], []
        )


def test_the_emulated_kernel_at_0_1_and_17_rows():
    """Empty batches, a single row in a block of many, and a partial block (Note [Kernel emulation])."""
    _, X, model = _models()[7]  # LightGBM: double sums, LightGBM reading inside the kernel
    cpu = trees.compile(model, backend="cpu")
    x, _ = cpu._input(X[:17])
    for lay in ("perfect-blocked", "compact-dfs"):
        g = gpu_layout.GpuLayout(cpu.forest, lay, torch.float32, torch.device("cpu"))
        for rows in (0, 1, 17):
            xr = x[:rows].contiguous()
            ref = g.walk(xr, cpu._base, False, False, [32, 1, 1, 1, 0])
            leaves = g.walk(xr, cpu._base, False, True, [32, 1, 1, 1, 0])
            assert ref.shape == (rows, 1) and leaves.shape == (rows, cpu.forest.n_trees)
            for cfg in (
                [512, 1, 2, 1, 2 if lay.startswith("perfect") else 0],
                [64, 16, 4, 1, 0],
                [32, 32, 1, 0, 0],
            ):
                assert torch.equal(g.walk(xr, cpu._base, False, False, cfg, emulate=True), ref), (
                    lay,
                    rows,
                    cfg,
                )
                assert torch.equal(g.walk(xr, cpu._base, False, True, cfg, emulate=True), leaves), (
                    lay,
                    rows,
                    cfg,
                )


def test_single_leaf_trees_in_every_layout():
    """A forest of depth 0 (a constant target): every layout, host twin and emulated kernel, with the
    mean finished inside the kernel."""
    X = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    model = RandomForestRegressor(n_estimators=3, random_state=0).fit(X, np.full(50, 2.5))
    cpu = trees.compile(model, backend="cpu")
    assert cpu.forest.max_depth == 0
    x, _ = cpu._input(X[:5])
    finish = compiled.fused_finish(cpu.forest, post=True)
    for lay in gpu_layout.LAYOUTS:
        g = gpu_layout.GpuLayout(cpu.forest, lay, torch.float32, torch.device("cpu"))
        for emulate in (False, True):
            out = g.walk(x, cpu._base, False, False, [64, 4, 2, 1, 0], emulate=emulate, finish=finish)
            assert torch.equal(out[:, 0], torch.as_tensor(model.predict(X[:5]), dtype=torch.float64)), lay


def test_the_emulated_kernel_refuses_what_the_tuner_leaves_out():
    """cuda_shared_bytes (the tuner's filter) is the kernel's own shared-memory plan: configurations at
    the 48 KB limit run, one output more is refused."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4)).astype(np.float32)
    for threads, lanes, ilp, fits in ((256, 1, 1, 24), (256, 2, 4, 44)):
        for classes in (fits, fits + 1):
            y = np.arange(400) % classes
            model = RandomForestClassifier(n_estimators=2, max_depth=3, random_state=0).fit(X, y)
            cf = trees.compile(model, backend="cpu")
            g = gpu_layout.GpuLayout(cf.forest, "wide", torch.float32, torch.device("cpu"))
            cfg = gpu.KernelConfig("wide", threads, lanes, ilp)
            x = torch.as_tensor(X[:3])
            base = torch.zeros(classes, dtype=torch.float64)
            args = [threads, lanes, ilp, 0]
            if classes == fits:
                assert gpu.cuda_shared_bytes(cfg, gpu.ForestShape(classes)) == gpu.CUDA_MAX_SHARED_BYTES
                assert torch.equal(
                    g.walk(x, base, False, False, args, emulate=True), g.walk(x, base, False, False, args)
                )
            else:
                assert gpu.cuda_shared_bytes(cfg, gpu.ForestShape(classes)) > gpu.CUDA_MAX_SHARED_BYTES
                with pytest.raises(RuntimeError, match="refuses this configuration"):
                    g.walk(x, base, False, False, args, emulate=True)


def test_tiled_walks_equal_the_cpu_kernel_over_several_tiles():
    """Note [Tiled walk]: 70 trees (two whole tiles and a partial one) with float32 sums (XGBoost) and
    double sums (LightGBM, its input reading inside the kernel): tiled launches (emulated, whole and
    partial blocks, 1, 2 and 4 rows in flight) and the generic kernel on the perfect-tiled layout give the
    CPU kernel's raw scores, finished probabilities and leaves bit for bit."""
    X, y = mixed_data(n=600)
    models = (
        xgb.XGBClassifier(n_estimators=70, max_depth=4).fit(X, y["bin"]),
        lgb.LGBMClassifier(n_estimators=70, num_leaves=8, verbose=-1).fit(X, y["bin"]),
    )
    for model in models:
        cpu = trees.compile(model, backend="cpu", strategy="traverse")
        f = cpu.forest
        rows, _ = trees.compiled.verification_rows(model, cpu, X)
        x = cpu._input(rows)[0][:45].contiguous()
        f32 = f.extra.get("accumulate") == "float32"
        ref_raw, ref_leaves = cpu._kernel.raw(x, cpu._base, f32), cpu._kernel.leaves(x)
        g = gpu_layout.GpuLayout(f, "perfect-tiled", torch.float32, torch.device("cpu"))
        finish = compiled.fused_finish(f, post=True, pair=True)
        ref_proba = g.walk(x, cpu._base, f32, False, [32, 1, 1, 1], finish=finish)
        for cfg in ([32, 1, 1, 1, 0, 1], [64, 1, 2, 1, 0, 1], [32, 1, 4, 1, 0, 1], [64, 32, 1, 1, 0, 0]):
            assert torch.equal(g.walk(x, cpu._base, f32, False, cfg, emulate=True), ref_raw), cfg
            assert torch.equal(g.walk(x, cpu._base, False, True, cfg, emulate=True).long(), ref_leaves), cfg
            assert torch.equal(g.walk(x, cpu._base, f32, False, cfg, emulate=True, finish=finish), ref_proba)
        perfect = gpu_layout.GpuLayout(f, "perfect", torch.float32, torch.device("cpu")).tensors[0]
        nodes = g.tensors[0]
        assert nodes.shape == (3, 1 << g.depth, 32, 2)
        assert torch.equal(nodes[1, : (1 << g.depth) - 1, 5], perfect[37, : (1 << g.depth) - 1])
        assert not nodes[2, :, 70 - 64 :].any() and not nodes[:, -1].any()  # absent trees, the spare slot


def test_tiled_launches_fit_shared_memory_as_the_tuner_counts():
    """cuda_shared_bytes of a tiled launch is the kernel's plan (tile_carve): a launch over
    CUDA_TILE_MAX_SHARED_BYTES is refused, one under it runs; the tuner tries tiled launches only on the
    perfect-tiled layout, for big batches; the layout takes one output and depth <= 8, CUDA only."""
    rng = np.random.default_rng(0)
    for n_features, threads, fits in ((100, 128, True), (100, 512, False)):
        X = rng.standard_normal((300, n_features)).astype(np.float32)
        model = xgb.XGBRegressor(n_estimators=3, max_depth=8).fit(X, X[:, 0])
        f = trees.compile(model).forest
        g = gpu_layout.GpuLayout(f, "perfect-tiled", torch.float32, torch.device("cpu"))
        shape = gpu.ForestShape(1, True, None, f.n_trees, (g.copies * n_features, f.max_depth))
        need = gpu.cuda_shared_bytes(gpu.KernelConfig("perfect-tiled", threads, tiled=True), shape)
        assert (need <= gpu.CUDA_TILE_MAX_SHARED_BYTES) == fits, need
        base = torch.zeros(1, dtype=torch.float64)
        x = torch.as_tensor(X[:3])
        args = [threads, 1, 1, 1, 0, 1]
        if fits:
            assert torch.equal(
                g.walk(x, base, True, False, args, emulate=True), g.walk(x, base, True, False, args)
            )
        else:
            with pytest.raises(RuntimeError, match="refuses this configuration"):
                g.walk(x, base, True, False, args, emulate=True)
    with pytest.raises(RuntimeError, match="refuses this configuration"):  # tiled needs the tiled layout
        gpu_layout.GpuLayout(f, "perfect", torch.float32, torch.device("cpu")).walk(
            x, base, True, False, [256, 1, 1, 1, 0, 1], emulate=True
        )
    small = gpu.ForestShape(1, True, None, 1000, (28, 8))
    big = gpu._cuda_candidates("perfect-tiled", 1 << 20, small)
    assert {c.threads for c in big if c.tiled} == {128, 256, 512} and all(
        c.layout == "perfect-tiled" for c in big
    )
    assert not any(c.tiled for c in gpu._cuda_candidates("perfect-tiled", 100, small))
    assert not any(
        c.tiled for c in gpu._cuda_candidates("perfect", 1 << 20, gpu.ForestShape(1, True, (256, 256)))
    )
    assert gpu.default_config("cuda", ["perfect-tiled"], 8, 1 << 20, 1, 132, small).threads == 512
    double = gpu.ForestShape(1, False, None, 1000, (28, 8))  # double values and sums: 512 threads do not fit
    assert gpu.default_config("cuda", ["perfect-tiled"], 8, 1 << 20, 1, 132, double) == gpu.KernelConfig(
        "perfect-tiled", 256, 1, 2, tiled=True
    )
    assert not gpu.default_config("cuda", ["perfect-tiled"], 8, 16, 1, 132, small).tiled
    multi = trees.compile(RandomForestClassifier(4, max_depth=3).fit(X[:, :4], np.arange(300) % 3)).forest
    assert gpu_layout.why_not(multi, "perfect-tiled", torch.float32) == "tiles hold one output per leaf"
    deep = trees.compile(DecisionTreeRegressor(max_depth=9, random_state=0).fit(X, X[:, 1])).forest
    assert "deeper than 8" in gpu_layout.why_not(deep, "perfect-tiled", torch.float32)
    assert gpu_layout.why_not(deep, "perfect", torch.float32) is None
    assert (
        "perfect-tiled" in gpu.GpuRunner(f, torch.device("cpu"), "cuda", torch.float32, tune=False).eligible
    )
    triton = gpu.GpuRunner(f, torch.device("cpu"), "triton", torch.float32, tune=False)
    assert "perfect-tiled" not in triton.eligible and "perfect" in triton.eligible


def test_tree_chunks_fill_shared_memory_exactly_as_the_tuner_counts():
    """A chunk of staged trees (perfect layout) that cuda_shared_bytes puts over 48 KB is refused by the
    kernel, the largest that fits runs, and the tuner's candidates all fit."""
    X, y = mixed_data(n=400)
    X = np.nan_to_num(X)
    model = RandomForestRegressor(n_estimators=30, max_depth=8, random_state=0).fit(X, y["reg"])
    cf = trees.compile(model, backend="cpu")
    f = cf.forest
    g = gpu_layout.GpuLayout(f, "perfect", torch.float32, torch.device("cpu"))
    x, _ = cf._input(X[:5])

    shape = gpu.ForestShape(f.n_outputs, False, g.tree_shape, f.n_trees)

    def need(chunk):
        cfg = gpu.KernelConfig("perfect", 32, 1, 1, tree_chunk=chunk)
        return gpu.cuda_shared_bytes(cfg, shape)

    fits = max(c for c in range(1, f.n_trees + 1) if need(c) <= gpu.CUDA_MAX_SHARED_BYTES)
    assert fits < f.n_trees, "a forest whose chunks can overflow shared memory"
    ref = g.walk(x, cf._base, False, False, [32, 1, 1, 0, 0])
    assert torch.equal(g.walk(x, cf._base, False, False, [32, 1, 1, 0, fits], emulate=True), ref)
    with pytest.raises(RuntimeError, match="refuses this configuration"):
        g.walk(x, cf._base, False, False, [32, 1, 1, 0, fits + 1], emulate=True)
    with pytest.raises(RuntimeError, match="refuses this configuration"):
        gpu_layout.GpuLayout(f, "wide", torch.float32, torch.device("cpu")).walk(
            x, cf._base, False, False, [32, 1, 1, 0, 1], emulate=True
        )
    cands = gpu._cuda_candidates("perfect", 1 << 20, shape)
    assert {c.tree_chunk for c in cands} >= {0, 2}
    assert all(c.lanes == 1 for c in cands if c.tree_chunk)
    assert all(need(c.tree_chunk) <= gpu.CUDA_MAX_SHARED_BYTES for c in cands if c.threads == 32)
    assert all(gpu.cuda_shared_bytes(c, shape) <= gpu.CUDA_MAX_SHARED_BYTES for c in cands)


def _finish_models():
    X, y = mixed_data(n=400)
    Xf = np.nan_to_num(X)
    counts = np.abs(y["reg"])
    return [
        ("xgb binary: float32 sigmoid", X, xgb.XGBClassifier(n_estimators=6, max_depth=4).fit(X, y["bin"])),
        (
            "lgb sigmoid:0.7: double, scaled",
            X,
            lgb.LGBMClassifier(n_estimators=6, num_leaves=8, sigmoid=0.7, verbose=-1).fit(X, y["bin"]),
        ),
        (
            "xgb poisson: float32 exp",
            Xf,
            xgb.XGBRegressor(objective="count:poisson", n_estimators=5, max_depth=3).fit(Xf, counts),
        ),
        (
            "rf 3 classes: mean",
            X,
            RandomForestClassifier(n_estimators=5, max_depth=5, random_state=0).fit(X, y["multi"]),
        ),
        (
            "rf regressor: mean, one output",
            Xf,
            RandomForestRegressor(n_estimators=4, max_depth=5, random_state=0).fit(Xf, y["reg"]),
        ),
    ]


@pytest.mark.parametrize("case", range(5))
def test_the_fused_finish_gives_the_torch_post_transforms(case):
    """Note [Fused finish]: the host twin and the emulated kernel (sums in registers and in shared
    memory) write the mean of the trees bit for bit as the torch ops do, sigmoid and exp to within
    float32 rounding of torch's (another math library), and the binary pair [1 - p, p]."""
    name, X, model = _finish_models()[case]
    cpu = trees.compile(model, backend="cpu", strategy="traverse")
    f = cpu.forest
    x, _ = cpu._input(X[:EMULATED_ROWS])
    f32 = f.extra.get("accumulate") == "float32" and f.aggregation != "mean"
    g = gpu_layout.GpuLayout(f, "compact-bfs", cpu._input_dtype, torch.device("cpu"))
    binary = f.classes is not None and f.n_outputs == 1
    cases = [
        (compiled.fused_finish(f, post=False), cpu._raw(x), True),
        (compiled.fused_finish(f, post=True), cpu._transformed(x), f.post_transform == "identity"),
    ]
    if binary:
        cases.append((compiled.fused_finish(f, post=True, pair=True), cpu._proba(x), False))
    for finish, ref, exact in cases:
        assert finish is not None, name
        out = g.walk(x, cpu._base, f32, False, [32, 1, 1, 1, 0], finish=finish)
        for cfg in ([64, 1, 2, 1, 0], [64, 8, 2, 1, 0]):
            emulated = g.walk(x, cpu._base, f32, False, cfg, emulate=True, finish=finish)
            assert torch.equal(emulated, out), (name, finish, cfg)
        if exact:
            assert torch.equal(out, ref), (name, finish)
        else:
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=0, msg=f"{name} {finish}")
    assert compiled.fused_finish(trees.compile(_models()[4][2]).forest, post=True) is None  # isolation


def test_blocked_perfect_trees_keep_a_node_and_its_children_in_one_sector():
    for depth in (1, 2, 5, 8):
        levels = np.concatenate([np.full(1 << d, d) for d in range(depth)])
        heap = np.arange(levels.size)
        slots = gpu_layout.blocked_slot(levels, heap)
        assert len(set(slots.tolist())) == slots.size and slots.max() < gpu_layout.blocked_slots(depth)
        inner = heap[(levels % 2 == 0) & (levels < depth - 1)]
        assert np.array_equal(slots[2 * inner + 1], slots[inner] + 1)  # children right after their parent
        assert np.array_equal(slots[2 * inner + 2], slots[inner] + 2)
        assert np.all(slots[levels % 2 == 0] % 4 == 0)  # a block starts a 32-byte sector
    assert gpu_layout.blocked_slots(8) == 340
    _, X, model = _models()[0]
    cpu = trees.compile(model, backend="cpu")
    g = gpu_layout.GpuLayout(cpu.forest, "perfect-blocked", torch.float32, torch.device("cpu"))
    x = torch.as_tensor(np.nan_to_num(X[:3]))
    args = _forest_args(g, nodes=g.tensors[0][:, :-4].contiguous())
    with pytest.raises(RuntimeError, match=r"perfect layout: depth \d+ needs \d+ node slots per tree"):
        torch.ops.pyzero.tree_walk(
            3, *args, x.shape[1], g.copies, x, cpu._base, False, False, [32, 1, 1, 1], []
        )


def test_compact_layouts_keep_children_side_by_side_and_trees_in_their_ranges():
    _, _, model = _models()[0]
    f = trees.compile(model).forest
    for lay in ("compact-bfs", "compact-dfs"):
        pos, largest = gpu_layout._positions(f, lay)
        ids = np.arange(f.feature.shape[0])
        split = ids[~forest_mod.leaf_mask(f)]
        assert np.array_equal(pos[f.right[split]], pos[f.left[split]] + 1)
        assert np.array_equal(np.sort(pos), ids)  # a permutation
        tree = forest_mod.tree_of(f)
        assert np.array_equal(forest_mod.tree_of(f)[pos], tree)  # each tree keeps its node range
        assert 1 <= largest <= gpu_layout.C8_MAX_OFFSET
    bfs, _ = gpu_layout._positions(f, "compact-bfs")
    depth = np.zeros(f.feature.shape[0], dtype=int)
    for k, lv in enumerate(forest_mod.levels(f)):
        depth[lv] = k
    for t in range(f.n_trees):  # breadth-first: depth never decreases along a tree's positions
        mine = np.flatnonzero(forest_mod.tree_of(f) == t)
        assert np.all(np.diff(depth[mine[np.argsort(bfs[mine])]]) >= 0)


def test_layouts_that_do_not_fit_say_why():
    rng = np.random.default_rng(0)
    wide = DecisionTreeRegressor(max_depth=3, random_state=0).fit(
        rng.standard_normal((60, 9000)), rng.standard_normal(60)
    )
    f = trees.compile(wide).forest
    assert f.feature.max() >= 0
    f.feature[f.feature >= 0] = 8999  # a split on a feature past the compact node's 13 bits
    assert "more than 8192 features" in gpu_layout.why_not(f, "compact-bfs", torch.float32)
    with pytest.raises(ValueError, match=r"does not fit layout 'compact-dfs'.*more than 8192 features"):
        gpu_layout.GpuLayout(f, "compact-dfs", torch.float32, torch.device("cpu"))
    X = rng.standard_normal((40000, 3)).astype(np.float32)
    deep = DecisionTreeRegressor(random_state=0).fit(X, rng.standard_normal(40000))
    fd = trees.compile(deep).forest
    assert gpu_layout.why_not(fd, "compact-dfs", torch.float32).startswith("a child lies more than 16383")
    assert gpu_layout.why_not(fd, "wide", torch.float32) is None
    assert "float32 inputs only" in gpu_layout.why_not(f, "perfect", torch.float64)
    assert "depth" in gpu_layout.why_not(fd, "perfect", torch.float32)
    with pytest.raises(ValueError, match="layout must be one of"):
        gpu_layout.why_not(f, "sparse", torch.float32)
    runner = gpu.GpuRunner(fd, torch.device("cpu"), "cuda", torch.float32, tune=False)
    assert runner.eligible == ["compact-bfs", "wide"] or runner.eligible == ["wide"]
    with pytest.raises(ValueError, match=r"strategy='perfect' does not fit .*perfect: depth"):
        gpu.GpuRunner(fd, torch.device("cpu"), "cuda", torch.float32, strategy="perfect")


def _forest_args(g: gpu_layout.GpuLayout, nodes: torch.Tensor | None = None) -> tuple:
    """pyzero::tree_walk's forest arguments (nodes .. depth) of a layout, optionally other nodes."""
    nodes_, roots, leaf_nodes, values, t64, cat_bits, kinds = g.tensors
    nodes = nodes_ if nodes is None else nodes
    return (nodes, roots, leaf_nodes, values, t64, cat_bits, g.cat_domain, kinds, g.depth)


def test_tree_walk_op_errors():
    _, X, model = _models()[5]
    cpu = trees.compile(model, backend="cpu", strategy="traverse")
    g = gpu_layout.GpuLayout(cpu.forest, "compact-bfs", torch.float32, torch.device("cpu"))
    x = torch.as_tensor(np.nan_to_num(X[:5]))
    with pytest.raises(
        RuntimeError, match=r"x must be a contiguous float32 or float64 tensor of shape \(rows, 6\)"
    ):
        g.walk(x[:, :3].contiguous(), cpu._base, True, False, [256, 1, 1, 1])
    with pytest.raises(RuntimeError, match="base must hold one float64 per output"):
        g.walk(x, cpu._base[:1], True, False, [256, 1, 1, 1])
    assert g.tensors[3].dtype == torch.float32  # XGBoost sums in float32: float32 leaf values
    with pytest.raises(RuntimeError, match="float32 values need float32_accum"):
        g.walk(x, cpu._base, False, False, [256, 1, 1, 1])
    args = (*_forest_args(g), 6, 1, x, cpu._base, True, False, [256, 1, 1, 1], [])
    with pytest.raises(
        RuntimeError,
        match=r"format must be 0 \(perfect\), 1 \(compact\), 2 \(wide\), 3 \(perfect blocked\) or 4 "
        r"\(perfect tiled\), got 7",
    ):
        torch.ops.pyzero.tree_walk(7, *args)
    with pytest.raises(RuntimeError, match="nodes must have 2 columns"):
        torch.ops.pyzero.tree_walk(2, *args)
    p = gpu_layout.GpuLayout(cpu.forest, "perfect", torch.float32, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="the perfect layout compares float32 inputs"):
        p.walk(x.double(), cpu._base, True, False, [256, 1, 1, 1])
    for finish, leaves, what in (
        ([1, 1, 0], False, r"finish must be \[\] or \[kind, scale, divisor, pair\], got 3 values"),
        ([3, 1, 0, 0], False, r"finish kind must be 0 \(raw\), 1 \(sigmoid\) or 2 \(exp\), got 3"),
        ([1, 1, -2, 0], False, "finish divisor must be >= 0"),
        ([1, 1, 0, 1], False, "finish pair needs one output, the forest has 3"),
        ([1, 1, 0, 0], True, "finish applies to sums, not to leaves"),
    ):
        with pytest.raises(RuntimeError, match=what):
            g.walk(x, cpu._base, True, leaves, [256, 1, 1, 1], finish=finish)
    with pytest.raises(
        RuntimeError, match=r"config must be \[threads, lanes, ilp, stage, tree_chunk, tiled\]"
    ):
        g.walk(x, cpu._base, True, False, [256, 1, 1], emulate=True)
    binary = trees.compile(_models()[2][2], backend="cpu").forest  # one output: tiles fit
    t = gpu_layout.GpuLayout(binary, "perfect-tiled", torch.float32, torch.device("cpu"))
    per_tree = gpu_layout.GpuLayout(binary, "perfect", torch.float32, torch.device("cpu"))
    base, xb = torch.zeros(1, dtype=torch.float64), torch.as_tensor(np.nan_to_num(_models()[2][1][:5]))
    tail = (xb.shape[1], t.copies, xb, base, False, False, [256, 1, 1, 1], [])
    with pytest.raises(
        RuntimeError, match=r"nodes must be a contiguous int32 tensor \[tiles, 2\^depth, 32, 2\]"
    ):
        torch.ops.pyzero.tree_walk(4, *_forest_args(t, per_tree.tensors[0]), *tail)
    nodes, roots, leaf_nodes, values, t64, cat_bits, kinds = t.tensors
    with pytest.raises(RuntimeError, match="nodes one tile per 32 trees, values"):
        torch.ops.pyzero.tree_walk(
            4, nodes, roots, leaf_nodes, values[:-32], t64, cat_bits, t.cat_domain, kinds, t.depth, *tail
        )
    torch.library.opcheck(torch.ops.pyzero.tree_walk.default, (1, *args))
    torch.library.opcheck(torch.ops.pyzero.tree_walk.default, (1, *args[:-1], [1.0, 1.0, 0.0, 0.0]))
    torch.library.opcheck(torch.ops.pyzero.tree_walk.default, (0, *_forest_args(p), 6, p.copies, *args[11:]))


def test_buckets_shared_memory_and_default_configs():
    assert [gpu.bucket_of(n) for n in (1, 2, 4, 5, 16, 17, 128, 1 << 20, (1 << 20) + 1)] == [
        0,
        1,
        1,
        2,
        2,
        3,
        4,
        10,
        11,
    ]
    cfg = gpu.KernelConfig("perfect", threads=256, lanes=8, ilp=4)
    r = 256 // 8
    assert gpu.cuda_shared_bytes(cfg, gpu.ForestShape(1)) == r * 8 + r * 8 * 4 * 8
    assert gpu.cuda_shared_bytes(cfg, gpu.ForestShape(3)) == -(-r * 3 * 8 // 16) * 16 + r * 8 * 4 * 4
    assert gpu.cuda_shared_bytes(cfg, gpu.ForestShape(1, float32_accum=True)) == r * 8 + r * 8 * 4 * 4
    assert gpu.cuda_shared_bytes(cfg, gpu.ForestShape(3), leaves=True) == 0
    for rows in (1, 100, 10_000, 1 << 20):
        for outs in (1, 4, 32):
            for c in gpu._cuda_candidates("wide", rows, gpu.ForestShape(outs)):
                assert gpu.cuda_shared_bytes(c, gpu.ForestShape(outs)) <= gpu.CUDA_MAX_SHARED_BYTES
                assert c.threads % c.lanes == 0
    one = gpu.default_config("cuda", ["perfect", "compact-bfs"], 8, 1, 1, sms=132)
    many = gpu.default_config("cuda", ["perfect", "compact-bfs"], 8, 1 << 20, 1, sms=132)
    assert (one.layout, one.lanes, many.lanes) == ("perfect", 256, 1)
    deep = gpu.default_config("cuda", ["perfect", "compact-bfs"], 13, 1000, 1, sms=132)
    assert deep.layout == "compact-bfs"  # DEFAULT_PERFECT_MAX_DEPTH
    small = gpu._triton_candidates(
        "wide", 1, gpu.ForestShape(1, n_trees=1000)
    )  # trees split over 32 or 8 programs
    assert {c.tree_split for c in small} == {1, 32, 8}
    assert {
        c.tree_split for c in gpu._triton_candidates("wide", 1 << 20, gpu.ForestShape(1, n_trees=1000))
    } == {1}
    big_outs = gpu.default_config("cuda", ["wide"], 5, 1 << 20, 32, sms=132)
    assert gpu.cuda_shared_bytes(big_outs, gpu.ForestShape(32)) <= gpu.CUDA_MAX_SHARED_BYTES


def test_tune_cache_round_trip_and_damaged_files(tmp_path):
    cache = gpu.TuneCache(tmp_path / "sub" / "tune.json")
    assert cache.get("k") is None
    cfg = gpu.KernelConfig("compact-dfs", threads=128, lanes=4, ilp=2)
    cache.put("k", cfg, 1.5e-4)
    cache.put("k2", gpu.KernelConfig("wide"), 2e-4)
    assert cache.get("k") == cfg and cache.get("k2") == gpu.KernelConfig("wide")
    data = json.loads((tmp_path / "sub" / "tune.json").read_text())
    assert data["format"] == gpu.TUNE_FORMAT and data["entries"]["k"]["seconds"] == 1.5e-4
    (tmp_path / "sub" / "tune.json").write_text("{not json")
    assert cache.get("k") is None
    cache.put("k", cfg, 1.0)  # a damaged file is replaced
    assert cache.get("k") == cfg
    data = json.loads((tmp_path / "sub" / "tune.json").read_text())
    data["entries"]["k"]["config"]["warp"] = 3  # a field this version does not know
    (tmp_path / "sub" / "tune.json").write_text(json.dumps(data))
    assert cache.get("k") is None


def test_fixed_configurations_and_their_errors():
    _, _, model = _models()[2]
    f = trees.compile(model).forest
    fixed = gpu.GpuRunner(
        f, torch.device("cpu"), "cuda", torch.float32, tune={"layout": "compact-dfs", "lanes": 4}
    )
    assert fixed.config(1) == fixed.config(1 << 20) == gpu.KernelConfig("compact-dfs", lanes=4)
    with pytest.raises(ValueError, match="tune: unknown KernelConfig field"):
        gpu.GpuRunner(f, torch.device("cpu"), "cuda", torch.float32, tune={"layout": "wide", "warps": 4})
    with pytest.raises(ValueError, match=r"tune: layout 'perfect' does not fit .*float32 inputs only"):
        gpu.GpuRunner(f, torch.device("cpu"), "cuda", torch.float64, tune={"layout": "perfect"})
    for bad, what in (
        ({"threads": 100}, "threads must be a multiple of 32"),
        ({"lanes": 3}, "lanes must divide threads"),
        ({"ilp": 3}, "ilp must be 1, 2 or 4"),
        ({"block_t": 6}, "block_r and block_t must be powers of two"),
        (
            {"tree_chunk": 4},
            "tree_chunk must be 0, or > 0 with layout perfect or perfect-blocked and lanes 1",
        ),
        ({"tiled": True}, "tiled needs backend 'cuda', layout 'perfect-tiled', lanes 1 and tree_chunk 0"),
        ({"tree_split": 2}, "tree_split must be 1, or more on the triton backend"),
    ):
        with pytest.raises(ValueError, match=what):
            gpu.GpuRunner(f, torch.device("cpu"), "cuda", torch.float32, tune={"layout": "wide", **bad})
    with pytest.raises(ValueError, match="tune must be True, False or a dict"):
        gpu.GpuRunner(f, torch.device("cpu"), "cuda", torch.float32, tune="fast")
    untuned = gpu.GpuRunner(f, torch.device("cpu"), "cuda", torch.float32, tune=True)
    assert not untuned.tune  # nothing to time without a CUDA device: the defaults
    assert not untuned.configured(7)
    assert untuned.config(7).layout == "perfect" and untuned.configured(7) and not untuned.configured(70)


def test_host_streams_reassemble_the_chunks_in_order(monkeypatch):
    """Note [Streamed host batches]: chunking, the two staging buffers and the outputs' reassembly (on a
    CPU device the same bookkeeping runs without streams)."""
    monkeypatch.setattr(gpu, "STREAM_MIN_CHUNK_ROWS", 1)
    monkeypatch.setattr(gpu, "STREAM_CHUNK_BYTES", 7 * 5 * 4)  # 7 rows of 5 float32 per chunk
    stream = gpu.HostStream(torch.device("cpu"), 5, torch.float32)
    assert stream.chunk == 7
    x = torch.randn(52, 5)
    calls = []

    def fn(xc):
        calls.append(xc.shape[0])
        return torch.stack([xc.double().sum(1), xc[:, 0].double() * 2, xc[:, 4].double()], 1)

    for rows in (52, 7, 14, 3, 52):
        calls.clear()
        out = stream.run(fn, x[:rows])
        assert torch.equal(out, fn(x[:rows])), rows
        assert calls[:-1] == [min(7, rows - start) for start in range(0, rows, 7)]
    one = stream.run(lambda xc: xc[:, :1].double(), x)  # fewer output columns: new output buffers
    assert torch.equal(one, x[:, :1].double())
    direct = gpu.HostStream(torch.device("cpu"), 5, torch.float32)  # pinned rows: no staging buffers
    monkeypatch.setattr(direct, "_direct", lambda rows: True)
    for rows in (52, 7, 3):
        assert torch.equal(direct.run(fn, x[:rows]), fn(x[:rows])), rows
    assert direct._in_host == [] and len(direct._in_dev) == 2


def test_forest_digest_follows_the_forest():
    _, _, model = _models()[2]
    f = trees.compile(model).forest
    d = gpu.forest_digest(f)
    assert d == gpu.forest_digest(trees.compile(model).forest)
    f.value[f.value != 0] += 1e-9
    assert gpu.forest_digest(f) != d


def _tuning_runner(tmp_path, model):
    """A GpuRunner on the CPU (pyzero::tree_walk's host twin stands in for the kernel) with tuning forced
    on, its cache in tmp_path, and a timer that charges each configuration a fixed, made-up time."""
    f = trees.compile(model).forest
    runner = gpu.GpuRunner(f, torch.device("cpu"), "cuda", torch.float32, tune=True)
    runner.tune = True  # on a CUDA device it is on by default; here the timings are made up
    runner.cache = gpu.TuneCache(tmp_path / "tune.json")
    timed: list[gpu.KernelConfig] = []
    run = runner.run

    def recording_run(x, base, f32, leaves, cfg):
        timed.append(cfg)
        return run(x, base, f32, leaves, cfg)

    def fake_seconds(cfg: gpu.KernelConfig) -> float:  # compact-dfs, 4 lanes, 2 trees in flight wins
        return (
            1.0
            + (cfg.layout != "compact-dfs")
            + abs(cfg.lanes - 4) / 8
            + abs(cfg.ilp - 2) / 16
            + cfg.threads / 1e4
        )

    def timer(fn):
        fn()
        return fake_seconds(timed[-1])

    runner.run, runner.timer = recording_run, timer
    return runner, timed


def test_the_tuner_picks_the_fastest_candidate_and_caches_it(tmp_path):
    _, X, model = _models()[2]
    runner, timed = _tuning_runner(tmp_path, model)
    x = torch.as_tensor(X[:300])
    cfg = runner.config(300, x)  # bucket 5: tuned at 1024 rows tiled from these 300
    assert (cfg.layout, cfg.lanes, cfg.ilp, cfg.threads) == ("compact-dfs", 4, 2, 128)
    assert {c.layout for c in timed} == set(runner.eligible)  # every layout, then mappings of the best two
    assert runner.configured(1000) and not runner.configured(2000)
    assert runner.cache.get(runner._key(5)) == cfg
    again, timed_again = _tuning_runner(tmp_path, model)
    assert again.config(300, x) == cfg and timed_again == []  # read from the disk cache
    assert again.config(1, x[:1]).layout in again.eligible and timed_again  # bucket 0: timed anew
    forced = runner.config(300, x, force=True)
    assert forced == cfg


def test_the_tuner_leaves_out_a_configuration_with_different_outputs(tmp_path):
    _, X, model = _models()[2]
    runner, _ = _tuning_runner(tmp_path, model)
    run = runner.run

    def corrupt(x, base, f32, leaves, cfg):
        out = run(x, base, f32, leaves, cfg)
        return out + 1e-12 if cfg.lanes == 4 and cfg.layout == "compact-dfs" else out

    runner.run = corrupt
    with pytest.warns(RuntimeWarning, match="gave outputs that differ"):
        cfg = runner.config(300, torch.as_tensor(X[:300]))
    assert not (cfg.lanes == 4 and cfg.layout == "compact-dfs")
