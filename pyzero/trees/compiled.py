"""trees.compile / CompiledForest / trees.verify."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyzero import _native
from pyzero.trees import (
    convert_lightgbm,
    convert_sklearn,
    convert_xgboost,
    fast_cpu,
    gpu,
    inputs,
    strategies,
    torch_strategies,
)
from pyzero.trees.forest import Forest

BACKENDS = ("auto", "cpu", "cuda", "torch", "triton")
STRATEGIES = ("auto", "traverse", "perfect", "bitvector", "gemm")
# C++ kernels that read LightGBM-prepared inputs themselves (column_kind): the caller skips that step.
_READING_KERNELS = (fast_cpu.PerfectForest, fast_cpu.BitvectorForest, fast_cpu.CpuKernelChoice, gpu.GpuRunner)
# verify(): random rows drawn when no X is given, and the cap on adversarial rows.
VERIFY_RANDOM_ROWS = 2000
VERIFY_MAX_ADVERSARIAL_ROWS = 20000
# Inputs around LightGBM's zero threshold (1e-35f: at or below it reads as 0.0).
TINY = (1e-36, float(np.float32(1e-35)), float(np.nextafter(np.float32(1e-35), np.float32(1))))
# A huge but finite input (scikit-learn sums the whole input to check finiteness: 3e38 would overflow).
HUGE = 1.0e30


def convert(
    model: Any, iteration_range: tuple[int, int] | None = None, num_iteration: int | None = None
) -> Forest:
    """The Forest of a fitted model; TypeError for unsupported classes, ValueError when unfitted."""
    name = type(model).__name__
    module = type(model).__module__
    if module.startswith("sklearn.") and name in convert_sklearn.SUPPORTED:
        if not hasattr(model, "n_features_in_"):
            raise ValueError(f"{name} is not fitted; call fit() before trees.compile()")
        return convert_sklearn.convert(model)
    if module.startswith("lightgbm") and name in convert_lightgbm.SUPPORTED:
        if name != "Booster" and not hasattr(model, "_Booster"):
            raise ValueError(f"{name} is not fitted; call fit() before trees.compile()")
        return convert_lightgbm.convert(model, num_iteration)
    if module.startswith("xgboost") and name in convert_xgboost.SUPPORTED:
        if name != "Booster" and not hasattr(model, "_Booster"):
            raise ValueError(f"{name} is not fitted; call fit() before trees.compile()")
        return convert_xgboost.convert(model, iteration_range)
    supported = ", ".join(
        [f"sklearn {n}" for n in convert_sklearn.SUPPORTED]
        + [f"xgboost {n}" for n in convert_xgboost.SUPPORTED]
        + [f"lightgbm {n}" for n in convert_lightgbm.SUPPORTED]
    )
    raise TypeError(f"trees.compile does not support {module}.{name}; supported: {supported}")


class CompiledForest:
    """A converted ensemble bound to a device; predicts with the chosen strategy.

    Inputs (see inputs.py): numpy arrays, torch tensors (on the compiled device), pandas DataFrames
    (category columns encoded as in training) or scipy.sparse matrices, shape [rows, n_features];
    values are cast to float32 (float64 for HistGradientBoosting) as the native libraries do. Outputs come
    back as float64 numpy arrays (torch tensors for torch input).
    """

    def __init__(
        self, forest: Forest, device: torch.device, strategy: str, backend: str = "auto", tune: Any = True
    ) -> None:
        self.forest = forest
        if device.type != "cpu" and device.index is None:  # "cuda" means the current device, by index
            device = torch.empty(0, device=device).device
        self.device = device
        self._choice: fast_cpu.CpuKernelChoice | None = None  # Note [CPU kernel choice]
        self.strategy = strategy  # resolved below for the cpu backend
        self._requested_strategy = strategy
        self.backend = _resolve_backend(backend, device, forest)
        # The dtype the native library compares in (HistGradientBoosting: float64; others float32).
        self._input_dtype = torch.float64 if forest.extra.get("input") == "float64" else torch.float32
        self._input_dtype_np = np.float64 if self._input_dtype == torch.float64 else np.float32
        self._torch: dict[str, Any] = {}  # torch strategy objects by name, built on first use
        self._profile = torch_strategies.profile(forest) if self.backend == "torch" else None
        if self.backend == "torch" and strategy == "bitvector":
            raise ValueError("strategy='bitvector' is a C++ CPU kernel: use backend='cpu'")
        if self.backend == "torch" and strategy != "auto":
            self._torch_strategy(strategy)  # ValueError now when the forest does not fit it
        self._base = torch.as_tensor(forest.base, dtype=torch.float64, device=device)
        self._n_trees = torch.tensor(float(forest.mean_divisor), dtype=torch.float64, device=device)
        self._kernel: Any = None
        self._gpu: gpu.GpuRunner | None = None
        self._graphs: gpu.SmallBatchGraphs | None = None
        self._stream: gpu.HostStream | None = None
        self._one_launch_kinds: dict[str, bool] = {}
        self._plain_inputs: bool | None = None  # see _as_is
        self._encoded_inputs = False  # see _as_is
        self._launches: dict[str, tuple[tuple[float, ...], bool] | None] = {}  # see _launch
        self._host_finish = host_finish(forest)  # Note [Host finishes]
        # Note [Prepared walks] (csrc/trees/tree_walk_plan.h): per output kind, the CUDA kernel's calls
        # prepared per batch-size bucket for rows taken as they are (_as_is): device rows, and host rows
        # of small batches (staged)
        self._plans: dict[str, Any] = {}
        self._tune = tune
        if self.backend == "cpu":
            self._kernel = self._cpu_kernel()
            self._plans = self._cpu_plans()
        elif self.backend in ("cuda", "triton"):
            if strategy not in ("auto", "traverse", "perfect"):
                raise ValueError(
                    f"backend={self.backend!r} takes strategy auto, traverse (node layouts) or perfect "
                    f"(perfect-tree layout), got {strategy!r}"
                )
            self._gpu = gpu.GpuRunner(forest, device, self.backend, self._input_dtype, tune, strategy)
            self._kernel = self._gpu
            if device.type == "cuda":
                self._graphs = gpu.SmallBatchGraphs(device, forest.n_features, self._input_dtype)
                self._stream = gpu.HostStream(device, forest.n_features, self._input_dtype)
                if self.backend == "cuda":
                    self._plans = {kind: _native.C.WalkPlans() for kind in ("raw", "transformed", "proba")}

    @property
    def strategy(self) -> str:
        """The strategy in use: on the cpu backend the kernel (perfect, bitvector or traverse), for a
        forest both the perfect and bitvector kernels take the one of large batches (Note [CPU kernel
        choice] in fast_cpu.py: timed on the first of them)."""
        if self._choice is not None:
            return self._choice.name_for(fast_cpu.CPU_TUNE_MIN_ROWS)
        return self._strategy

    @strategy.setter
    def strategy(self, name: str) -> None:
        self._strategy = name

    def _torch_strategy(self, name: str):
        if name not in self._torch:
            self._torch[name] = torch_strategies.build(name, self.forest, self.device)
        return self._torch[name]

    def _torch_for(self, rows: int):
        """The torch strategy for a batch of `rows`: the one asked for, or the automatic choice by
        depth and batch size (torch_strategies.choose_strategy)."""
        name = self._requested_strategy
        if name == "auto":
            name = torch_strategies.choose_strategy(self.forest, rows, self._profile)
        return self._torch_strategy(name)

    def _cpu_plans(self) -> dict[str, Any]:
        """Note [Prepared CPU calls] (csrc/trees/tree_cpu_plan.h): per output kind whose steps are the
        kernel and one finish_sums call, a pyzero._C.CpuPredictPlan for rows taken as they are (_as_is;
        fewer than CPU_TUNE_MIN_ROWS when large batches time the two kernels); none for the node
        kernel, for inputs that need converting, or for outputs that take more steps (scikit-learn's
        softmax, IsolationForest scores)."""
        plan = getattr(self._kernel, "plan", None)
        f = self.forest
        if plan is None or f.post_transform == "isolation":
            return {}
        encodes = getattr(self._kernel, "encodes", False)  # Note [Encoded categories]
        if not self._as_is(torch.empty((0, f.n_features), dtype=self._input_dtype), encoded=encodes):
            return {}
        timed = isinstance(getattr(self._kernel, "inner", self._kernel), fast_cpu.CpuKernelChoice)
        max_rows = fast_cpu.CPU_TUNE_MIN_ROWS if timed else 2**62
        kinds = ("raw", "proba") if f.classes is not None else ("raw", "transformed")
        plans = {}
        for kind in kinds:
            launch = self._launch(kind)
            if launch is None:
                continue
            finish, f32 = launch
            flat = kind != "proba" and f.n_outputs == 1
            plans[kind] = _native.C.CpuPredictPlan(plan, self._base, f32, list(finish), flat, max_rows)
        return plans

    def _cpu_kernel(
        self,
    ) -> (
        strategies.PackedForest
        | fast_cpu.PerfectForest
        | fast_cpu.BitvectorForest
        | fast_cpu.CpuKernelChoice
        | fast_cpu.BinnedKernel
    ):
        """The C++ kernel for backend "cpu": the perfect-tree SIMD kernel when the forest fits it
        (Note [Perfect trees]) and the strategy allows, else the bitvector kernel of trees of at most 256
        leaves, categorical splits included (Note [Bitvector trees]; first for deep trees of few leaves:
        fast_cpu.prefers_bitvector), else the node-by-node traversal; with strategy "auto", a forest both
        of the first two take gets both, chosen per batch (Note [CPU kernel choice] in fast_cpu.py).
        Forests that compare float64 inputs take the first two on binned rows (Note [Binned float64
        inputs] in fast_cpu.py) where they can, else the node kernel."""
        if self.strategy == "gemm":
            raise ValueError("strategy='gemm' is a torch strategy: use backend='torch'")
        forest, f64, wrap = self.forest, None, lambda kernel: kernel
        if self._input_dtype == torch.float64:  # Note [Binned float64 inputs] in fast_cpu.py
            f64 = fast_cpu.why_not_binned(forest)
            if f64 is None:
                binned = fast_cpu.BinnedRows(forest)
                forest, wrap = binned.forest, binned.kernel
        if self.strategy == "auto" and f64 is None:
            if fast_cpu.why_ineligible(forest) is None and fast_cpu.why_not_bitvector(forest) is None:
                self._choice = fast_cpu.CpuKernelChoice(forest)
                return wrap(self._choice)
        kernels = [
            ("perfect", fast_cpu.why_ineligible, fast_cpu.PerfectForest),
            ("bitvector", fast_cpu.why_not_bitvector, fast_cpu.BitvectorForest),
        ]
        if fast_cpu.prefers_bitvector(forest):
            kernels.reverse()
        for name, why_not, build in kernels:
            if self.strategy in ("auto", name):
                why = f64 or why_not(forest)
                if why is None:
                    self.strategy = name
                    return wrap(build(forest))
                if self.strategy == name:
                    raise ValueError(f"strategy={name!r} does not fit this {self.forest.source}: {why}")
        self.strategy = "traverse"
        return strategies.PackedForest(self.forest)

    def save(self, path: Any) -> None:
        """Saves the forest (not the device or backend) as .npz; trees.load() reads it back."""
        self.forest.save(path)

    def to(self, device: str | torch.device) -> CompiledForest:
        device = torch.device(device)
        keep = device.type == "cpu" or self.backend in ("torch", "triton", "cuda")
        backend = self.backend if keep else "auto"
        return CompiledForest(self.forest, device, self._requested_strategy, backend, self._tune)

    def kernel_config(self, rows: int) -> gpu.KernelConfig | None:
        """The GPU kernel configuration a batch of `rows` gets (Note [Tree autotuning] in gpu.py; None
        off the cuda and triton backends)."""
        return None if self._gpu is None else self._gpu.config(rows)

    def tune(self, X: Any, batch_sizes: tuple[int, ...] = (1, 16, 128, 10_000, 1_000_000)) -> dict[int, Any]:
        """Tunes the GPU kernel for each batch size on X's rows (Note [Tree autotuning]); returns the
        configuration chosen per batch size."""
        if self._gpu is None:
            raise ValueError(f"tune() needs backend 'cuda' or 'triton', this forest uses {self.backend!r}")
        x = inputs.to_tensor(X, self.forest, self.device, self._input_dtype)[0]
        for plans in self._plans.values():  # prepared with the configurations tuned before
            plans.clear()
        return {b: self._gpu.config(b, x, force=True) for b in batch_sizes}

    # ------------------------------------------------------------------------------- inputs
    def _input(self, X: Any) -> tuple[Tensor, bool]:
        if type(X) is Tensor and self._as_is(X):  # the common latency-bound case, checked first
            return X, True
        if self._graphs is not None:
            # host rows: Note [Small-batch graphs] and Note [Streamed host batches]; a CPU tensor of any
            # size (its outputs stay on the host), other host rows of small or streamed batches
            cpu_tensor = isinstance(X, Tensor) and X.device.type == "cpu"
            rows = 0 if isinstance(X, Tensor) else _rows(X)
            if cpu_tensor or (
                not isinstance(X, Tensor) and (rows <= gpu.GRAPH_MAX_ROWS or rows >= gpu.STREAM_MIN_ROWS)
            ):
                reads = fast_cpu.reads_like_lightgbm(self.forest)  # then the kernel reads like LightGBM
                return inputs.to_tensor(
                    X, self.forest, torch.device("cpu"), self._input_dtype, lightgbm_reading=not reads
                )
        kernel_reads = isinstance(self._kernel, _READING_KERNELS) and fast_cpu.reads_like_lightgbm(
            self.forest
        )
        return inputs.to_tensor(
            X, self.forest, self.device, self._input_dtype, lightgbm_reading=not kernel_reads
        )

    def _as_is(self, X: Tensor, device: torch.device | None = None, encoded: bool = False) -> bool:
        """Whether the kernel takes tensor X as it is: on the device (or `device`), in the input dtype,
        [rows, n_features], contiguous, for a forest whose inputs need no conversion before this kernel
        (what inputs.to_tensor would otherwise do; encoded: but for the encoding of categories, which
        the caller does)."""
        if self._plain_inputs is None:
            f = self.forest
            kernel_reads = isinstance(self._kernel, _READING_KERNELS) and fast_cpu.reads_like_lightgbm(f)
            lightgbm = bool(f.extra.get("zero_tiny_inputs") or f.extra.get("clamp_inf"))
            self._encoded_inputs = bool(f.encode_numeric and f.categories)
            self._plain_inputs = np.isnan(f.extra.get("missing", np.nan)) and (kernel_reads or not lightgbm)
        return (
            self._plain_inputs
            and (encoded or not self._encoded_inputs)
            and X.device == (device or self.device)
            and X.dtype == self._input_dtype
            and X.dim() == 2
            and X.shape[1] == self.forest.n_features
            and X.is_contiguous()
        )

    def _output(self, t: Tensor, as_torch: bool):
        return t if as_torch else t.cpu().numpy()

    # ------------------------------------------------------------------------------ outputs
    def _on_device(self, kind: str, fn, x: Tensor) -> Tensor:
        """fn(x) for a batch of at most GRAPH_MAX_ROWS rows through a CUDA graph once its bucket's kernel
        configuration is known (tuned on these rows first); host rows give host outputs."""
        if not self._gpu.configured(x.shape[0]):
            self._gpu.config(x.shape[0], x.to(self.device))
        return self._graphs.run(kind, fn, x, self._one_launch(kind))

    def _one_launch(self, kind: str) -> bool:
        """Whether the `kind` outputs of a batch are one launch of the CUDA kernel (its fused finish
        does every step after the sums)."""
        if kind not in self._one_launch_kinds:
            launch = self._launch(kind)
            one = self.backend == "cuda" and launch is not None and launch[0][:1] != (FINISH_SOFTMAX,)
            self._one_launch_kinds[kind] = one
        return self._one_launch_kinds[kind]

    def _launch(self, kind: str) -> tuple[tuple[float, ...], bool] | None:
        """(finish, float32_accum) of the one GPU kernel call whose outputs are the `kind` outputs
        ("raw", "transformed" or "proba"; Note [Fused finish] in csrc/trees/tree_walk.h), or None when
        they take more steps (or the forest is not on a GPU backend)."""
        if kind not in self._launches:
            f = self.forest
            acc32 = f.extra.get("accumulate") == "float32"
            if self._gpu is None and self.backend != "cpu":
                launch = None
            elif kind == "raw" and (f.aggregation != "mean" or f.extra.get("raw_is_sum")):
                launch = ((), acc32)  # the sums as they are
            else:
                binary = f.classes is not None and f.n_outputs == 1
                finish = fused_finish(f, post=kind != "raw", pair=kind == "proba" and binary)
                if (
                    finish is None
                    and kind != "raw"
                    and f.post_transform == "softmax"
                    and f.extra.get("softmax") not in PYTHON_SOFTMAX  # the library's own: _transformed_direct
                    and (self.device.type == "cpu" or _native.cuda_built())
                ):
                    mean = float(f.mean_divisor) if f.aggregation == "mean" else 0.0
                    finish = (FINISH_SOFTMAX, 1.0, mean, 0.0)  # finish_sums after the kernel, not in it
                launch = None if finish is None else (finish, acc32 and f.aggregation != "mean")
            self._launches[kind] = launch
        return self._launches[kind]

    def _prepared(self, kind: str, X: Any):
        """Note [Prepared walks]: the `kind` outputs of X by the prepared call of its batch-size bucket
        (tensors out for tensors in, numpy for numpy), or None when there is none that takes X."""
        plans = self._plans.get(kind)  # the cpu backend prepares only some kinds
        if plans is None:
            return None
        if type(X) is Tensor:
            return plans(X)
        if type(X) is not np.ndarray:
            return None
        if not self._numpy_as_is(X):  # small batches of other numbers: converted as inputs.to_tensor does
            if X.dtype.kind not in "biuf" or X.ndim != 2 or X.shape[0] > inputs.NUMPY_PREP_MAX_ROWS:
                return None
            X = np.array(X, dtype=self._input_dtype_np, order="C")  # a writable copy
        out = plans(torch.from_numpy(X))
        return None if out is None else out.numpy()

    def _numpy_as_is(self, X: np.ndarray) -> bool:
        """Whether numpy rows go to a prepared call through torch.from_numpy (a writable C-contiguous
        array of the input dtype: no copy, no warning)."""
        return X.dtype == self._input_dtype_np and X.flags.c_contiguous and X.flags.writeable

    def _prepare(self, kind: str, X: Any, flat: bool) -> None:
        """Note [Prepared walks]: after a call on rows X taken as they are (on the device, or for at most
        GRAPH_MAX_ROWS rows on the host), the kernel call of X's batch-size bucket prepared for the
        `kind` outputs (flat: one column, as [rows]), so that the next calls of the bucket skip every
        step in Python and the op's checks."""
        plans = self._plans.get(kind)
        if plans is None or not self._one_launch(kind):
            return
        if type(X) is np.ndarray and self._numpy_as_is(X):
            X = torch.from_numpy(X)
        if type(X) is not Tensor or X.dim() != 2 or X.shape[0] == 0:
            return
        rows = X.shape[0]
        host = X.device.type == "cpu" and rows <= gpu.GRAPH_MAX_ROWS
        if not self._as_is(X, X.device if host else None) or not self._gpu.configured(rows):
            return
        finish, f32 = self._launch(kind)
        bucket = gpu.bucket_of(rows)
        host_rows = 4**bucket if host else 0  # the bucket's most rows
        plans.set(bucket, self._gpu.plan(rows, X, self._base, f32, finish, flat, host_rows))

    def _small(self, x: Tensor) -> bool:
        # graphs exist on a CUDA device only, so the capture check needs no torch.cuda.is_available()
        return (
            self._graphs is not None
            and x.shape[0] <= gpu.GRAPH_MAX_ROWS
            and not torch.cuda.is_current_stream_capturing()
        )

    def _streamed(self, x: Tensor) -> bool:
        """Host rows of a large batch for a forest on the GPU (Note [Streamed host batches])."""
        return self._stream is not None and x.device.type == "cpu" and x.shape[0] > gpu.GRAPH_MAX_ROWS

    def _route(self, kind: str, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """fn(x) through a small-batch graph (Note [Small-batch graphs]), streamed from the host (Note
        [Streamed host batches]) or directly; `kind` names fn's outputs for the graphs."""
        if self._small(x):
            return self._on_device(kind, fn, x)
        if self._streamed(x):
            return self._stream.run(fn, x)
        return fn(x)

    def _raw(self, x: Tensor) -> Tensor:
        return self._route("raw", self._raw_direct, x)

    def _fused(self, x: Tensor, kind: str) -> Tensor | None:
        """The `kind` outputs as one GPU kernel call (_launch), or as the kernel's sums finished by one
        finish_sums call (Note [Fused finish]: the cpu backend, and softmax on the GPU); None when they
        take more steps."""
        launch = self._launch(kind)
        if launch is None:
            return None
        finish, f32 = launch
        if self.backend != "cpu" and finish[:1] != (FINISH_SOFTMAX,):
            return self._kernel.raw(x, self._base, f32, finish)
        if not finish:
            return self._kernel.raw(x, self._base, f32)
        mean = finish[2] > 0  # the finish divides sums from 0, then adds base
        raw = self._kernel.raw(x, torch.zeros_like(self._base) if mean else self._base, f32)
        return _native.C.finish_sums(raw, self._base, list(finish), f32)

    def _raw_direct(self, x: Tensor, reported: bool = True) -> Tensor:
        """The raw scores: decision_function's (`reported`; LightGBM's rf reports the sum of its trees,
        extra["raw_is_sum"]) or those the post-transform takes (the forest's aggregation)."""
        f = self.forest
        f32 = f.extra.get("accumulate") == "float32"
        mean = f.aggregation == "mean" and not (reported and f.extra.get("raw_is_sum"))
        if self._kernel is not None:
            if mean:
                fused = None if f.extra.get("raw_is_sum") else self._fused(x, "raw")
                if fused is not None:
                    return fused
                # a tensor divisor: CUDA divides by a host scalar via its reciprocal
                return self._kernel.raw(x, torch.zeros_like(self._base), False) / self._n_trees + self._base
            return self._kernel.raw(x, self._base, f32)
        aggregation = f.aggregation if mean else "sum"
        return self._torch_for(x.shape[0]).raw_scores(x, f.mean_divisor, aggregation, self._base, f32)

    def decision_function(self, X: Any):
        """Raw scores before the post-transform: [rows] for one output, else [rows, outputs].
        IsolationForest: score_samples - offset_ (negative for outliers), as scikit-learn."""
        if self._plans:  # Note [Prepared walks]
            out = self._prepared("raw", X)
            if out is not None:
                return out
        x, as_torch = self._input(X)
        if self.forest.post_transform == "isolation":
            scores = self._transformed(x, host=not as_torch)[:, 0]
            return self._output(scores - self.forest.extra["offset"], as_torch)
        raw = self._raw(x)
        self._prepare("raw", X, flat=raw.shape[1] == 1)
        return self._output(raw[:, 0] if raw.shape[1] == 1 else raw, as_torch)

    def score_samples(self, X: Any):
        """IsolationForest's anomaly score [rows] (lower is more abnormal)."""
        if self.forest.post_transform != "isolation":
            raise AttributeError(f"{self.forest.source} has no score_samples (IsolationForest only)")
        x, as_torch = self._input(X)
        return self._output(self._transformed(x, host=not as_torch)[:, 0], as_torch)

    def _transformed(self, x: Tensor, host: bool = False) -> Tensor:
        """Raw scores through the forest's post-transform, one column per output; host: the caller
        takes them on the host (Note [Host finishes])."""
        if self._host_finish:
            out = self._post(self._raw(x).cpu())
            return out if host or x.device.type == "cpu" else out.to(self.device)
        return self._route("transformed", self._transformed_direct, x)

    def _transformed_direct(self, x: Tensor) -> Tensor:
        fused = self._fused(x, "transformed")
        if fused is not None:
            return fused
        return self._post(self._raw_direct(x, reported=False))

    def _post(self, raw: Tensor) -> Tensor:
        """The forest's post-transform of raw scores [rows, outputs]: on the host as the library computes
        it where a Python library does (Note [Host finishes]), else in torch."""
        post = self.forest.post_transform
        if self.forest.extra.get("accumulate") == "float32":  # the library transforms in float32 too
            raw = raw.to(torch.float32)
        if post == "sigmoid":
            scale = self.forest.extra.get("sigmoid_scale", 1.0)
            return torch.sigmoid(raw if scale == 1.0 else raw * scale).double()
        if post == "softmax":
            how = self.forest.extra.get("softmax")
            if how == "numpy" and raw.device.type == "cpu":
                return torch.from_numpy(_numpy_softmax(raw.numpy()))
            if how == "scipy" and raw.device.type == "cpu":  # XGBClassifier's for multi:softmax
                from scipy.special import softmax

                return torch.from_numpy(softmax(raw.numpy(), axis=1).astype(np.float64))
            return torch.softmax(raw, dim=1).double()
        if post == "exp":
            how = self.forest.extra.get("exp")
            if how == "numpy" and raw.device.type == "cpu":
                return torch.from_numpy(np.exp(raw.numpy()))  # scikit-learn's inverse link (np.exp)
            if how == "double":  # XGBoost's survival:aft: exp of the float32 margin in double, to float32
                return torch.ops.pyzero.libm_exp(raw.double()).float().double()  # Note [Library exp]
            return torch.exp(raw).double()
        if post == "hinge":  # XGBoost's binary:hinge: 1 where the margin is > 0
            return (raw > 0).double()
        if post == "softplus":  # LightGBM's cross_entropy_lambda, with the host's log1p and exp
            return torch.ops.pyzero.libm_softplus(raw.double().cpu()).to(raw.device)
        if post == "isolation":
            if raw.device.type == "cpu":  # scikit-learn's own numpy steps (IsolationForest.score_samples)
                return torch.from_numpy(-(2 ** -np.divide(raw.numpy(), self.forest.extra["denominator"])))
            return -torch.pow(2.0, -raw / self.forest.extra["denominator"])
        return raw.double()

    def _proba(self, x: Tensor, host: bool = False) -> Tensor:
        """Class probabilities [rows, classes]; small GPU batches in one graph, the binary [1 - p, p]
        included (two fewer launches per call); host: as _transformed."""
        if self._host_finish:
            p = self._transformed(x, host)
            binary = self.forest.classes is not None and self.forest.n_outputs == 1
            return _binary_proba(p, self.forest) if binary else p
        return self._route("proba", self._proba_direct, x)

    def _proba_direct(self, x: Tensor) -> Tensor:
        fused = self._fused(x, "proba")
        if fused is not None:
            return fused
        binary = self.forest.classes is not None and self.forest.n_outputs == 1
        p = self._transformed_direct(x)
        if binary:
            return _binary_proba(p, self.forest)
        return p

    def predict_proba(self, X: Any):
        """Class probabilities [rows, classes] (classifiers only)."""
        if self._plans:  # Note [Prepared walks]
            out = self._prepared("proba", X)
            if out is not None:
                return out
        if self.forest.classes is None:
            raise AttributeError(f"{self.forest.source} is a regressor: it has no predict_proba")
        x, as_torch = self._input(X)
        cpu_fused = self.backend == "cpu" and self._launch("proba") is not None  # [1 - p, p] in C++
        if as_torch or self._small(x) or self._streamed(x) or cpu_fused:
            p = self._proba(x, host=not as_torch)
            self._prepare("proba", X, flat=False)
            return self._output(p, as_torch)
        p = self._transformed(x, host=True)
        if p.shape[1] != 1:
            return self._output(p, as_torch)
        return _binary_proba(p.cpu().numpy(), self.forest)  # half the copy back, cheaper array calls

    def predict(self, X: Any):
        """Class labels for classifiers, values [rows] or [rows, outputs] for regressors."""
        if self._plans:  # Note [Prepared walks]: regressors only
            out = self._prepared("transformed", X)
            if out is not None:
                return out
        x, as_torch = self._input(X)
        if self.forest.post_transform == "isolation":  # 1 inlier, -1 outlier
            decision = self._transformed(x, host=not as_torch)[:, 0] - self.forest.extra["offset"]
            labels = torch.where(decision < 0, -1, 1)
            return labels if as_torch else labels.cpu().numpy()
        if self.forest.classes is not None:
            idx = self._proba(x, host=True).argmax(dim=1).cpu().numpy()
            labels = self.forest.classes[idx]
            return torch.as_tensor(labels) if as_torch else labels
        out = self._transformed(x, host=not as_torch)
        self._prepare("transformed", X, flat=out.shape[1] == 1)
        if out.shape[1] == 1:
            out = out[:, 0]
        return self._output(out, as_torch)

    def apply(self, X: Any):
        """Leaf index reached in every tree, local to the tree as the native apply() numbers it."""
        x, as_torch = self._input(X)
        x = x.to(self.device)  # host rows of a small or streamed batch (see _input)
        kernel = self._kernel if self._kernel is not None else self._torch_for(x.shape[0])
        leaf_id = torch.as_tensor(self.forest.leaf_id, dtype=torch.int64, device=self.device)
        return self._output(leaf_id[kernel.leaves(x)], as_torch)


def _binary_proba(p: Any, forest: Forest) -> Any:
    """[P(0), P(1)] [rows, 2] from P(1) [rows, 1] (float64 Tensor or ndarray): 1 - p in float32 where the
    library computes it so (XGBoost subtracts from its float32 p), as store_output does (Note [Fused
    finish])."""
    f32 = forest.extra.get("accumulate") == "float32"
    if isinstance(p, Tensor):
        return torch.cat([(1 - p.float()).double() if f32 else 1 - p, p], dim=1)
    return np.concatenate([(1 - p.astype(np.float32)).astype(np.float64) if f32 else 1 - p, p], axis=1)


def _numpy_softmax(raw: np.ndarray) -> np.ndarray:
    """scikit-learn's softmax (sklearn.utils.extmath.softmax) of float64 [rows, classes], step for step."""
    p = raw.astype(np.float64, copy=True)
    p -= p.max(axis=1).reshape(-1, 1)
    np.exp(p, out=p)
    p /= p.sum(axis=1).reshape(-1, 1)
    return p


# Post-transforms the CUDA kernel applies itself, by its finish kind (kFinish* in tree_walk.h).
_FUSED_POST = {"identity": 0, "sigmoid": 1, "exp": 2}
# extra["softmax"] of forests whose library computes its softmax in Python: scikit-learn's numpy steps,
# XGBClassifier's scipy.special.softmax of the float32 margins (objective multi:softmax).
PYTHON_SOFTMAX = ("numpy", "scipy")

# Note [Host finishes]
# ~~~~~~~~~~~~~~~~~~~~
# Where the library itself finishes its sums in numpy or scipy (scikit-learn's multiclass softmax and
# its numpy exp of Poisson, gamma and Tweedie scores, IsolationForest's 2 ** -x, XGBClassifier's scipy
# softmax for multi:softmax), or with a libm function no device code repeats (LightGBM's
# cross_entropy_lambda: log1p(exp(x))), every backend finishes them the same way: the raw scores (on any
# device, through the small-batch graphs and streams of a GPU), then the library's own calls on the
# host (_post). Their results depend on the host's numpy (its SIMD exp, glibc's pow) or libm, so only
# the host's own calls equal them bit for bit. On a GPU the scores cross
# to the host once (callers that return numpy take them there; tensor callers get them back on the
# device), and the finish costs what it costs the library.


def host_finish(forest: Forest) -> bool:
    """Whether Note [Host finishes] applies: the library finishes the forest's sums in Python, or with a
    libm function that only the host has."""
    post, extra = forest.post_transform, forest.extra
    python = (
        (post == "softmax" and extra.get("softmax") in PYTHON_SOFTMAX)
        or (post == "exp" and extra.get("exp") == "numpy")
        or post == "isolation"
        or post == "softplus"  # LightGBM's log1p(exp(x)): glibc's log1p, which no device code repeats
    )
    return python and not extra.get("raw_is_sum")  # decision_function's raw scores are the finish's


FINISH_SOFTMAX = 3.0  # finish_sums' softmax of a row's outputs (kFinishSoftmax): after the kernel, not in it


def fused_finish(forest: Forest, post: bool, pair: bool = False) -> tuple[float, ...] | None:
    """The tree kernel's finish (Note [Fused finish] in csrc/trees/tree_walk.h) that gives what the torch
    ops of CompiledForest give: the mean of the trees, then the post-transform when `post`, written as
    [1 - p, p] when `pair`; None where the kernels do not (softmax, isolation, scikit-learn's numpy exp,
    a mean summed in float32 then transformed, no trees)."""
    kind = _FUSED_POST.get(forest.post_transform) if post else _FUSED_POST["identity"]
    if post and forest.post_transform == "exp" and forest.extra.get("exp") in ("numpy", "double"):
        kind = None  # scikit-learn's np.exp, XGBoost's double exp of survival:aft (_post), not expf
    mean = forest.aggregation == "mean"
    if kind is None or forest.n_trees == 0 or (mean and post and forest.extra.get("accumulate") == "float32"):
        return None
    sigmoid = post and forest.post_transform == "sigmoid"
    scale = float(forest.extra.get("sigmoid_scale", 1.0)) if sigmoid else 1.0
    return (kind, scale, float(forest.mean_divisor) if mean else 0.0, float(pair))


def compile(
    model: Any,
    backend: str = "auto",
    strategy: str = "auto",
    device: Any = None,
    iteration_range: tuple[int, int] | None = None,
    num_iteration: int | None = None,
    tune: bool | dict = True,
) -> CompiledForest:
    """Converts a fitted tree ensemble into a CompiledForest on `device` (default CPU).

    backend: "auto" (the C++ kernels on CPU, the CUDA kernel on a CUDA device when pyzero._C has it,
    else Triton, else the torch strategies), "cpu", "cuda", "triton" or "torch".
    strategy: "auto"; "traverse", "perfect" (cpu, torch, cuda and triton), "bitvector" (cpu: trees of
    at most 256 leaves, Note [Bitvector trees]) or "gemm" (torch).
    iteration_range: XGBoost boosting rounds [start, end) to keep (as in XGBoost's predict).
    num_iteration: LightGBM iterations to keep (default: the best iteration if early stopping set one).
    tune: GPU backends: autotune the kernel per batch-size bucket (True), use the defaults (False), or
    a fixed configuration, a dict of gpu.KernelConfig fields (Note [Tree autotuning] in gpu.py)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    forest = convert(model, iteration_range, num_iteration)
    return CompiledForest(forest, torch.device(device or "cpu"), strategy, backend, tune)


def _resolve_backend(backend: str, device: torch.device, forest: Forest) -> str:
    if backend == "auto":
        if device.type == "cpu":
            return "cpu" if _native.C is not None else "torch"
        if device.type == "cuda" and _native.cuda_built():
            return "cuda"
        if device.type == "cuda" and _triton_available():
            return "triton"
        return "torch"
    if backend == "cpu":
        _native.require("trees backend='cpu'")
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs device cpu, got {device}")
    if backend == "cuda":
        _native.require("trees backend='cuda'")
        if device.type != "cuda" or not _native.cuda_built():
            built = "" if _native.cuda_built() else " (and pyzero._C was built without CUDA)"
            raise ValueError(f"backend='cuda' needs a CUDA device, got {device}{built}")
    if backend == "triton":
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                "backend='triton' runs on a CUDA device (or on CPU under TRITON_INTERPRET=1), got cpu"
            )
        try:
            import triton  # noqa: F401
        except ImportError as e:
            raise ValueError("backend='triton' needs the triton package (pip install triton)") from e
    return backend


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _rows(X: Any) -> int:
    shape = getattr(X, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else len(X)


def adversarial_rows(
    forest: Forest, base_rows: np.ndarray, allow_inf: bool, allow_nan: bool, seed: int = 0
) -> np.ndarray:
    """Rows that put every split on its knife edge: each used threshold exactly (float32 nearest and
    both directed roundings), one ulp below and above, plus +-0, huge values, NaN and +-inf (when the
    native model accepts them), each written into one column of a base row."""
    rng = np.random.default_rng(seed)
    specials = [0.0, -0.0, HUGE, -HUGE, *TINY, *(-t for t in TINY)]
    if allow_nan:
        specials.append(np.nan)
    if allow_inf:
        specials += [np.inf, -np.inf]
    with np.errstate(over="ignore"):  # thresholds beyond FLT_MAX (LightGBM's 1e300) become +-inf
        return _adversarial_rows(forest, base_rows, allow_inf, specials, rng)


def _adversarial_rows(
    forest: Forest, base_rows: np.ndarray, allow_inf: bool, specials: list, rng
) -> np.ndarray:
    rows = []
    split = forest.feature >= 0
    dtype = base_rows.dtype.type
    for f in range(forest.n_features):
        t = forest.threshold64[split & (forest.feature == f)]
        if dtype == np.float64:
            edges = t
        else:
            edges = np.concatenate([t.astype(np.float32), forest.threshold32[split & (forest.feature == f)]])
        vals = np.concatenate(
            [edges, np.nextafter(edges, dtype(-np.inf)), np.nextafter(edges, dtype(np.inf)), specials]
        ).astype(dtype)
        cats = _category_probes(forest, f)
        if cats.size:
            vals = np.concatenate([vals, cats.astype(dtype)])
        if not allow_inf:  # thresholds may be +-inf themselves (sklearn's missing-value-only splits)
            vals = vals[~np.isinf(vals)]
        block = base_rows[rng.integers(0, base_rows.shape[0], size=vals.shape[0])].copy()
        block[:, f] = vals
        rows.append(block)
    out = np.concatenate(rows) if rows else base_rows[:0]
    if out.shape[0] > VERIFY_MAX_ADVERSARIAL_ROWS:
        out = out[rng.choice(out.shape[0], VERIFY_MAX_ADVERSARIAL_ROWS, replace=False)]
    return out


# Category values at the edges of every library's domain (Note [Categorical splits]).
CATEGORY_EDGES = (-1.0, -0.5, 0.5, 2.0**24 - 1, 2.0**24, 2.0**31, -(2.0**31))


def _category_probes(forest: Forest, feature: int) -> np.ndarray:
    """Inputs that exercise feature's categorical splits: every category of its sets, between and
    beyond them, the domain edges, and (when the model encodes numbers) known and unseen values."""
    nodes = (forest.feature == feature) & (forest.cat_set >= 0)
    known = forest.categories.get(feature)
    if forest.encode_numeric and known is not None:
        k = np.asarray([c for c in known if isinstance(c, (int, float))], dtype=np.float64)
        return np.concatenate([k, k + 0.5, [k.max(initial=0) + 1, -1.0, -0.5]])
    if not nodes.any():
        return np.zeros(0)
    bits = forest.cat_bits[np.unique(forest.cat_set[nodes])]
    codes = np.flatnonzero(((bits[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1).any(axis=0).reshape(-1))
    top = 32.0 * bits.shape[1]
    return np.concatenate([codes, codes + 0.5, [top, top + 1, *CATEGORY_EDGES]])


def verification_rows(model: Any, cf: CompiledForest, X: Any = None, seed: int = 0) -> tuple[Any, Any]:
    """(rows, leaf_rows) verify() compares on: X (or random rows) plus adversarial_rows, without the
    values the native model rejects; leaf_rows drop infinities (XGBoost's apply() rejects them). A
    DataFrame X with category or string columns is used as it is."""
    if inputs.has_categories(X):
        return X, X
    rng = np.random.default_rng(seed)
    f = cf.forest
    dtype = cf._input_dtype_np
    if X is None:
        base = rng.standard_normal((VERIFY_RANDOM_ROWS, f.n_features)).astype(dtype)
    else:
        base = np.asarray(X.to_numpy() if hasattr(X, "to_numpy") else X, dtype=dtype)
    nan_ok, inf_ok = _accepts(model, np.nan, f.n_features), _accepts(model, np.inf, f.n_features)
    if not nan_ok:
        base = base[~np.isnan(base).any(axis=1)]
    rows = np.concatenate([base, adversarial_rows(f, base, inf_ok, nan_ok, seed)])
    return rows, rows[~np.isinf(rows).any(axis=1)]


def verify(model: Any, cf: CompiledForest, X: Any = None, seed: int = 0) -> dict[str, Any]:
    """Fuzzes `cf` against the native model on random and adversarial rows (verification_rows);
    returns a report with the worst absolute disagreement per output kind and whether labels and
    leaves agree exactly. A DataFrame X with category or string columns is compared as it is."""
    rows, leaf_rows = verification_rows(model, cf, X, seed)
    report = {"rows": int(rows.shape[0]), "adversarial": not inputs.has_categories(X)}
    return _compare(model, cf, rows, leaf_rows, report)


def _compare(model: Any, cf: CompiledForest, rows: Any, leaf_rows: Any, report: dict[str, Any]) -> dict:
    """Adds the worst disagreements of cf and model on rows to report (see verify)."""
    f = cf.forest
    n = report["rows"]
    report["max_abs_diff"] = {}
    for method in ("predict_proba", "decision_function", "score_samples"):
        if hasattr(model, method) and (method != "predict_proba" or f.classes is not None):
            ours = np.asarray(getattr(cf, method)(rows), dtype=np.float64)
            native = np.asarray(getattr(model, method)(rows), dtype=np.float64).reshape(ours.shape)
            report["max_abs_diff"][method] = float(np.max(np.abs(ours - native))) if n else 0.0
    ours_pred, native_pred = cf.predict(rows), model.predict(rows)
    if f.classes is not None or f.post_transform == "isolation":
        report["labels_equal"] = bool(np.array_equal(ours_pred, native_pred))
    else:
        ours_p = np.asarray(ours_pred, dtype=np.float64).reshape(np.shape(native_pred))
        report["max_abs_diff"]["predict"] = float(np.max(np.abs(ours_p - native_pred))) if n else 0.0
    native_leaves = _native_leaves(model, leaf_rows)
    if native_leaves is not None:
        ours_leaves = np.asarray(cf.apply(leaf_rows)).reshape(native_leaves.shape)
        report["leaves_equal"] = bool(np.array_equal(ours_leaves, native_leaves))
    worst = max(report["max_abs_diff"].values(), default=0.0)
    report["worst"] = worst
    report["ok"] = worst <= 1e-6 and report.get("labels_equal", True) and report.get("leaves_equal", True)
    return report


def _accepts(model: Any, value: float, n_features: int) -> bool:
    """Whether the native model predicts on a row holding `value` (sklearn rejects inf, and NaN for
    estimators without missing-value support)."""
    try:
        model.predict(np.full((1, n_features), value, dtype=np.float64))
    except Exception:  # each library raises its own error type
        return False
    return True


def _native_leaves(model: Any, rows: np.ndarray) -> np.ndarray | None:
    """Leaf index per (row, tree) from the native library, or None when it cannot say."""
    if type(model).__module__.startswith("lightgbm"):
        out = model.predict(rows, pred_leaf=True)
    elif hasattr(model, "apply"):
        out = model.apply(rows)
    else:
        return None
    return np.asarray(out).reshape(np.shape(rows)[0], -1)


def load(path: Any, backend: str = "auto", strategy: str = "auto", device: Any = None) -> CompiledForest:
    """A CompiledForest from a file written by CompiledForest.save()."""
    return CompiledForest(Forest.load(path), torch.device(device or "cpu"), strategy, backend)


# Attribute of a Forest holding tree_predict_triton's / tree_predict_cuda's CompiledForests by
# (backend, device): the arrays stay uploaded for as long as the forest lives.
GPU_CACHE_ATTR = "_pyzero_gpu"


def tree_predict_triton(forest: Forest, X: Tensor, *, leaves: bool = False) -> Tensor:
    """The Triton kernel on a Forest (e.g. `trees.compile(model).forest`) and X [rows, n_features], a
    float32 (float64 for HistGradientBoosting) tensor on a CUDA device (or CPU under
    TRITON_INTERPRET=1). Returns the raw scores before the post-transform, float64 [rows, outputs],
    or with leaves=True the leaf index of every tree as the native apply() numbers it, int64
    [rows, trees]."""
    return _gpu_predict("triton", forest, X, leaves)


def tree_predict_cuda(forest: Forest, X: Tensor, *, leaves: bool = False) -> Tensor:
    """tree_predict_triton's twin on the CUDA kernel (csrc/cuda/tree_cuda.cu); X on a CUDA device."""
    return _gpu_predict("cuda", forest, X, leaves)


def _gpu_predict(backend: str, forest: Forest, X: Tensor, leaves: bool) -> Tensor:
    if not isinstance(X, Tensor) or X.dim() != 2 or X.dtype not in (torch.float32, torch.float64):
        got = f"{X.dtype} of shape {tuple(X.shape)}" if isinstance(X, Tensor) else type(X).__name__
        raise ValueError(f"X must be a 2-D float32 or float64 tensor, got {got}")
    cache = forest.__dict__.setdefault(GPU_CACHE_ATTR, {})
    key = (backend, str(X.device))
    cf = cache.get(key)
    if cf is None:
        cf = cache[key] = CompiledForest(forest, X.device, "auto", backend)
    if leaves:
        return cf.apply(X)
    x, _ = cf._input(X)
    return cf._raw(x)
