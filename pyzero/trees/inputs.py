"""Inputs of compiled forests: numpy arrays, torch tensors, pandas DataFrames (category columns
encoded as the model was trained, Note [Categorical splits] in forest.py) and scipy.sparse matrices
(XGBoost: an absent entry is missing; the other libraries read it as 0.0)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyzero.trees.forest import ZERO_THRESHOLD, Forest

ZERO_THRESHOLD_F32 = float(np.float32(ZERO_THRESHOLD))


def _from_numpy(arr: np.ndarray) -> Tensor:
    """torch.from_numpy without its warning on read-only arrays: the trees only read their inputs."""
    if arr.flags.writeable:
        return torch.from_numpy(arr)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def to_tensor(
    X: Any, forest: Forest, device: torch.device, dtype: torch.dtype, lightgbm_reading: bool = True
) -> tuple[Tensor, bool]:
    """(x [rows, n_features] contiguous `dtype` on `device`, whether X was a torch tensor).
    lightgbm_reading=False: leave LightGBM's input reading to the kernel (fast_cpu)."""
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    if type(X) is np.ndarray and X.dtype.kind in "biuf" and X.ndim == 2 and X.shape[0] <= NUMPY_PREP_MAX_ROWS:
        if X.shape[1] != forest.n_features:  # the common small-batch case, checked first (latency)
            raise ValueError(f"X must have shape (rows, {forest.n_features}) for this model, got {X.shape}")
        arr = np.ascontiguousarray(X, dtype=np_dtype)
        if forest.encode_numeric and forest.categories:
            arr = _encode_numeric(arr, forest)
        return _from_numpy(_library_reading(arr, forest, np, lightgbm_reading)).to(device=device), False
    as_torch = isinstance(X, Tensor)
    if as_torch:
        if X.device != device:
            raise ValueError(f"X is on {X.device} but the forest is compiled for {device}; use cf.to()")
        if X.is_complex() or not (X.is_floating_point() or X.dtype in _TORCH_INTS):
            raise TypeError(f"X must hold real numbers, got torch dtype {X.dtype}")
        x = X.to(dtype)
    elif _is_sparse(X):
        x = torch.as_tensor(_densify(X, forest, np_dtype))
    else:
        if _is_frame(X):
            arr = _frame_to_numpy(X, forest, np_dtype)
        else:
            arr = np.asarray(X)
            if arr.dtype == object and forest.categories:  # e.g. strings in a categorical column
                import pandas as pd

                arr = _frame_to_numpy(pd.DataFrame(arr), forest, np_dtype)
            elif arr.dtype.kind not in "biuf":
                raise TypeError(
                    f"X must hold numbers, got dtype {arr.dtype} (encode string features first, or pass "
                    "a pandas DataFrame with category columns to a model trained on them)"
                )
        x = _from_numpy(np.ascontiguousarray(arr, dtype=np_dtype))
    _check_shape(x, forest)
    if forest.encode_numeric and forest.categories and not _is_frame(X):
        x = _encode_numeric(x, forest)
    return _library_reading(x, forest, torch, lightgbm_reading).to(device=device).contiguous(), as_torch


# Batches up to this many rows are prepared with numpy (a few us less per call than torch ops; batch-1
# latency is measured in bench/bench_trees.py), larger ones with torch (multithreaded).
NUMPY_PREP_MAX_ROWS = 256


def _check_shape(x: Tensor, forest: Forest) -> None:
    if x.dim() != 2 or x.shape[1] != forest.n_features:
        raise ValueError(
            f"X must have shape (rows, {forest.n_features}) for this model, got {tuple(x.shape)}"
        )


def _library_reading(x, forest: Forest, xp, lightgbm: bool = True):
    """x as the native library reads it, with xp = numpy or torch (the same calls in both): LightGBM's
    |x| <= 1e-35f -> 0.0 and +-inf -> +-1e300 (clamped to the float's max, convert_lightgbm.py),
    XGBoost's missing= value -> NaN."""
    if lightgbm and forest.extra.get("zero_tiny_inputs"):
        x = xp.where(xp.abs(x) <= ZERO_THRESHOLD_F32, 0.0, x)
    if lightgbm and forest.extra.get("clamp_inf"):
        big = float(np.finfo(np.float32 if x.dtype in (np.float32, torch.float32) else np.float64).max)
        x = xp.clip(x, -big, big)
    missing = forest.extra.get("missing", np.nan)
    if not np.isnan(missing):
        x = xp.where(x == np.float32(missing), float("nan"), x)
    return x


_TORCH_INTS = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool)


def has_categories(X: Any) -> bool:
    """Whether X is a DataFrame with category or string columns."""
    return _is_frame(X) and any(dt.kind not in "biuf" for dt in X.dtypes)


def _is_frame(X: Any) -> bool:
    return hasattr(X, "dtypes") and hasattr(X, "columns") and hasattr(X, "items")


def _is_sparse(X: Any) -> bool:
    return type(X).__module__.startswith("scipy.sparse")


def _densify(X: Any, forest: Forest, np_dtype) -> np.ndarray:
    """Dense rows of a scipy.sparse matrix: absent entries NaN for XGBoost, else 0.0."""
    csr = X.tocsr()
    if csr.ndim != 2 or csr.shape[1] != forest.n_features:
        raise ValueError(f"X must have shape (rows, {forest.n_features}) for this model, got {csr.shape}")
    fill = np.nan if forest.extra.get("sparse_absent") == "missing" else 0.0
    out = np.full(csr.shape, fill, dtype=np_dtype)
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    out[rows, csr.indices] = csr.data
    return out


def _frame_to_numpy(df: Any, forest: Forest, np_dtype) -> np.ndarray:
    """A DataFrame's columns as numbers: category/string columns become the codes the model was trained
    on (unknown -> NaN, or ValueError when forest.unknown_category is "error")."""
    import pandas as pd

    cols = []
    split_on = set(forest.feature[forest.cat_set >= 0].tolist())  # features of categorical splits
    for j, (name, col) in enumerate(df.items()):
        numeric = col.dtype.kind in "biuf" and not isinstance(col.dtype, pd.CategoricalDtype)
        known = forest.categories.get(j)
        if numeric and not (forest.encode_numeric and known is not None):
            cols.append(col.to_numpy(dtype=np_dtype, na_value=np.nan))
            continue
        if known is None:
            is_cat = isinstance(col.dtype, pd.CategoricalDtype)
            if is_cat and j in split_on:  # the model was trained on these codes directly
                codes = col.cat.codes.to_numpy()
            elif is_cat and col.cat.categories.dtype.kind in "biuf":  # numbers, as numpy reads them
                cols.append(col.astype(np_dtype).to_numpy(dtype=np_dtype, na_value=np.nan))
                continue
            else:
                raise TypeError(
                    f"X column {name!r} has dtype {col.dtype}: the model has no categories for feature {j} "
                    "(pass numbers, or category columns to a model trained on them)"
                )
        else:
            codes = pd.Index(known).get_indexer(col.astype(object))
            unknown = (codes == -1) & ~col.isna().to_numpy()
            if forest.unknown_category == "error" and unknown.any():
                value = col[unknown].iloc[0]
                raise ValueError(f"X column {name!r} holds category {value!r} not seen in training")
        cols.append(np.where(codes < 0, np.nan, codes).astype(np_dtype))
    if not cols:
        return np.zeros((df.shape[0], 0), dtype=np_dtype)
    return np.stack(cols, axis=1)


def category_codes(forest: Forest) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """[(feature, its known numeric categories ascending (float64), the code of each)], made once per
    forest (kept on it): rebuilding them took most of a HistGradientBoosting call at batch 1."""
    cached = forest.__dict__.get("_category_codes")
    if cached is None:
        cached = []
        for j, known in forest.categories.items():
            if not all(isinstance(c, (int, float)) for c in known):
                raise TypeError(f"feature {j} has string categories: pass X as a pandas DataFrame")
            k = np.asarray(known, dtype=np.float64)
            order = np.argsort(k, kind="stable")
            cached.append((j, k[order], order.astype(np.float64)))
        forest.__dict__["_category_codes"] = cached
    return cached


def _encode_numeric(x: Any, forest: Forest) -> Any:
    """Numeric categorical columns of x (a numpy array or tensor, [rows, n_features]) -> their positions
    among the known categories (unknown -> NaN), as scikit-learn's OrdinalEncoder does inside
    HistGradientBoosting; a copy."""
    lib = np if isinstance(x, np.ndarray) else torch
    x = x.copy() if lib is np else x.clone()
    for j, k_sorted, codes in category_codes(forest):
        v = x[:, j]
        if k_sorted.size == 0:
            x[:, j] = float("nan")
            continue
        if lib is np:
            pos = np.minimum(np.searchsorted(k_sorted, v), k_sorted.size - 1)
            x[:, j] = np.where(k_sorted[pos] == v, codes[pos], np.nan)
        else:
            k, code = _category_tensors(forest, x.device, x.dtype)[j]
            pos = torch.searchsorted(k, v.contiguous()).clamp(max=k_sorted.size - 1)
            x[:, j] = torch.where(k[pos] == v, code[pos], torch.full_like(v, float("nan")))
    return x


def _category_tensors(
    forest: Forest, device: torch.device, dtype: torch.dtype
) -> dict[int, tuple[Tensor, Tensor]]:
    """category_codes' tables as tensors on `device`, made once per (device, dtype) and kept on the
    forest: no host-to-device copy per call, so that calls can be captured in a CUDA graph."""
    tables = forest.__dict__.setdefault("_category_tensors", {})
    key = (str(device), dtype)
    if key not in tables:
        tables[key] = {
            j: (
                torch.as_tensor(k, device=device, dtype=dtype),
                torch.as_tensor(c, device=device, dtype=dtype),
            )
            for j, k, c in category_codes(forest)
        }
    return tables[key]
