"""XGBoost gbtree models -> Forest, read from the model's JSON (not the text dump).

XGBoost sends x left when float32 x < split_condition (a float32), NaN (and the `missing` value)
follow default_left; a tree adds its leaf value to output group tree_info[i]; the margin starts at
the base score (stored in output space, turned into a margin by the objective).
"""

from __future__ import annotations

import itertools
import json

import numpy as np

from pyzero.trees.forest import CAT_INVALID_LEFT, CMP_CAT_IN_RIGHT, CMP_LT, Forest, concat_trees

# XGBoost's categorical domain: a category must be >= 0 and below 2**24 (the float32 integers);
# anything else goes left (common/categorical.h InvalidCat). Note [Categorical splits].
XGB_CAT_DOMAIN = (0.0, float(2**24), float(CAT_INVALID_LEFT))

SUPPORTED = ("XGBClassifier", "XGBRegressor", "XGBRanker", "XGBRFClassifier", "XGBRFRegressor", "Booster")
# Objective -> post-transform of the summed margin.
POST = {
    "reg:squarederror": "identity",
    "reg:squaredlogerror": "identity",
    "reg:pseudohubererror": "identity",
    "reg:absoluteerror": "identity",
    "reg:logistic": "sigmoid",
    "binary:logistic": "sigmoid",
    "binary:logitraw": "identity",
    "multi:softprob": "softmax",
    "multi:softmax": "softmax",
    "count:poisson": "exp",
    "rank:pairwise": "identity",
    "rank:ndcg": "identity",
    "rank:map": "identity",
}


def convert(model, iteration_range: tuple[int, int] | None = None) -> Forest:
    booster = model.get_booster() if hasattr(model, "get_booster") else model
    doc = json.loads(booster.save_raw("json"))
    learner = doc["learner"]
    objective = learner["objective"]["name"]
    if objective not in POST:
        raise TypeError(f"XGBoost objective {objective!r} is not supported; supported: {sorted(POST)}")
    gb = learner["gradient_booster"]
    if gb["name"] != "gbtree":
        raise TypeError(f"XGBoost booster {gb['name']!r} is not supported (only gbtree)")
    m = gb["model"]
    n_groups = max(1, int(learner["learner_model_param"]["num_class"]))
    indptr = m["iteration_indptr"]
    lo, hi = (0, len(indptr) - 1) if not iteration_range or iteration_range == (0, 0) else iteration_range
    chosen = range(indptr[lo], indptr[hi])
    trees, cat_sets = [], []
    for i in chosen:
        t = m["trees"][i]
        left = np.asarray(t["left_children"], dtype=np.int64)
        cat_set = np.full(left.shape[0], -1)
        seg, size = t.get("categories_segments", []), t.get("categories_sizes", [])
        for j, node in enumerate(t.get("categories_nodes", [])):
            cat_set[node] = len(cat_sets)
            cat_sets.append(np.asarray(t["categories"][seg[j] : seg[j] + size[j]], dtype=np.int64))
        cond = np.asarray(t["split_conditions"], dtype=np.float32)  # exact float32 values
        value = np.zeros((left.shape[0], n_groups))
        value[:, m["tree_info"][i]] = np.where(left < 0, cond, 0.0)
        trees.append(
            {
                "feature": np.asarray(t["split_indices"], dtype=np.int64),
                "threshold": cond.astype(np.float64),  # directed rounding of an f32 value is itself
                "left": left,
                "right": np.asarray(t["right_children"], dtype=np.int64),
                "default_left": np.asarray(t["default_left"], dtype=bool),
                "cmp": np.where(np.asarray(t["split_type"]) == 1, CMP_CAT_IN_RIGHT, CMP_LT),
                "cat_set": cat_set,
                "value": value,
            }
        )
    n_features = int(learner["learner_model_param"]["num_feature"])
    classes = getattr(model, "classes_", None) if type(model).__name__.endswith("Classifier") else None
    forest = concat_trees(
        trees,
        cat_sets,
        n_features=n_features,
        cat_domain=np.asarray(XGB_CAT_DOMAIN),
        categories=_categories(m.get("cats")),
        unknown_category="error",
        base=np.zeros(n_groups),
        aggregation="sum",
        post_transform=POST[objective],
        classes=None if classes is None else np.asarray(classes),
        source=type(model).__name__,
        extra={
            "objective": objective,
            "missing": float(getattr(model, "missing", np.nan)),
            "accumulate": "float32",
            "sparse_absent": "missing",
        },
    )
    forest.base = _base_margin(booster, forest, (lo, hi))
    return forest


def _categories(cats: dict | None) -> dict[int, list]:
    """{feature: training categories} from the model's "cats" (XGBoost >= 3.1 stores the categories
    of DataFrame columns there, strings as UTF-8 bytes cut by offsets)."""
    out: dict[int, list] = {}
    for f, enc in enumerate((cats or {}).get("enc", [])):
        values, offsets = enc.get("values", []), enc.get("offsets", [])
        if offsets:
            raw = bytes(values)
            out[f] = [raw[a:b].decode() for a, b in itertools.pairwise(offsets)]
        elif values:
            out[f] = list(values)
    return out


def _base_margin(booster, forest: Forest, rounds: tuple[int, int]) -> np.ndarray:
    """The margin XGBoost starts from, read off the booster: its margin on an all-NaN row minus the
    leaf values our traversal collects for that row (the stored base_score goes through the
    objective's link function, and may have been estimated from the data at fit time)."""
    import xgboost as xgb

    from pyzero.trees.strategies import ForestTensors, traverse

    row = np.full((1, forest.n_features), np.nan, dtype=np.float32)
    dm = xgb.DMatrix(
        row, feature_names=booster.feature_names, feature_types=booster.feature_types, enable_categorical=True
    )
    margin = booster.predict(dm, output_margin=True, iteration_range=rounds)
    native = np.asarray(margin, dtype=np.float64).reshape(-1)
    import torch

    ft = ForestTensors(forest, torch.device("cpu"))
    leaves = traverse(ft, torch.as_tensor(row))
    acc = torch.zeros(forest.n_outputs, dtype=torch.float32)
    for t in range(forest.n_trees):  # the float32 order XGBoost sums in, so base + trees is exact
        acc += ft.value[leaves[0, t]].to(torch.float32)
    return native - acc.double().numpy()
