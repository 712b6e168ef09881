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
    "binary:hinge": "hinge",
    "multi:softprob": "softmax",
    "multi:softmax": "softmax",
    "count:poisson": "exp",
    "reg:gamma": "exp",
    "reg:tweedie": "exp",
    "survival:cox": "exp",
    "survival:aft": "exp",
    "reg:quantileerror": "identity",
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
    params = learner["learner_model_param"]
    # outputs: one per class, or per target of a multi-target regressor (one tree per target a round)
    n_groups = max(1, int(params["num_class"]), int(params.get("num_target", 1)))
    indptr = m["iteration_indptr"]
    lo, hi = (0, len(indptr) - 1) if not iteration_range or iteration_range == (0, 0) else iteration_range
    chosen = range(indptr[lo], indptr[hi])
    trees, cat_sets = [], []
    for i in chosen:
        t = m["trees"][i]
        vector = int(t["tree_param"].get("size_leaf_vector", "1"))  # > 1: multi_output_tree
        left = np.asarray(t["left_children"], dtype=np.int64)
        right = np.asarray(t["right_children"], dtype=np.int64)
        cat_set = np.full(left.shape[0], -1)
        seg, size = t.get("categories_segments", []), t.get("categories_sizes", [])
        for j, node in enumerate(t.get("categories_nodes", [])):
            cat_set[node] = len(cat_sets)
            cat_sets.append(np.asarray(t["categories"][seg[j] : seg[j] + size[j]], dtype=np.int64))
        cond = np.asarray(t["split_conditions"], dtype=np.float32)  # exact float32 values
        value = np.zeros((left.shape[0], n_groups))
        leaf = left < 0
        if vector > 1:  # a leaf's right child is its row of leaf_weights, one value per output
            if vector != n_groups:
                raise TypeError(f"XGBoost vector leaves of {vector} values for {n_groups} outputs")
            weights = np.asarray(t["leaf_weights"], dtype=np.float32).reshape(-1, vector)
            value[leaf] = weights[right[leaf]]
            right = np.where(leaf, -1, right)
        else:
            value[:, m["tree_info"][i]] = np.where(leaf, cond, 0.0)
        trees.append(
            {
                "feature": np.asarray(t["split_indices"], dtype=np.int64),
                "threshold": cond.astype(np.float64),  # directed rounding of an f32 value is itself
                "left": left,
                "right": right,
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
            # XGBClassifier.predict_proba of multi:softmax: scipy's softmax of the float32 margins
            **({"softmax": "scipy"} if objective == "multi:softmax" else {}),
            # survival:aft takes exp of its float32 margin in double, then rounds to float32
            **({"exp": "double"} if objective == "survival:aft" else {}),
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


# Rows XGBoost predicts to pin the base margin down to the bit (see _base_margin), and how many float32
# ulps around the first estimate are tried.
BASE_PROBE_ROWS = 256
BASE_PROBE_SCALES = (0.25, 1.0, 2.0, 4.0)  # spreads of the probe rows: near and far from the splits
BASE_PROBE_ULPS = 8


def _base_margin(booster, forest: Forest, rounds: tuple[int, int]) -> np.ndarray:
    """The float32 margin XGBoost starts its sum from, read off the booster (the stored base_score goes
    through the objective's link function, and may have been estimated from the data at fit time).

    Candidates: the stored base_score p through each link XGBoost uses, in float32 (identity,
    -log(1/p - 1), log p), and XGBoost's margin on an all-NaN row minus our float32 sum of that row's
    leaves (off by the sum's rounding), each with its float32 neighbours. The one that reproduces the
    probe rows' margins bit for bit, after the first round and after all of them, wins; else the one
    with the fewest mismatches, then the closest. The first round decides between neighbours: a sum of
    many trees hides the base's last bit (two neighbours both reproduced 64 rows of a 10-tree
    binary:logistic model, and the wrong one missed 16 of 1500 rows by an ulp)."""
    import torch
    import xgboost as xgb

    from pyzero.trees.strategies import ForestTensors, traverse

    rng = np.random.default_rng(0)
    scale = rng.choice(BASE_PROBE_SCALES, size=(BASE_PROBE_ROWS, 1))
    rows = (rng.standard_normal((BASE_PROBE_ROWS, forest.n_features)) * scale).astype(np.float32)
    cat_features = np.unique(forest.feature[forest.cat_set >= 0])
    rows[:, cat_features] = rng.integers(0, 8, (BASE_PROBE_ROWS, cat_features.size))
    rows[0] = np.nan
    dm = xgb.DMatrix(
        rows,
        feature_names=booster.feature_names,
        feature_types=booster.feature_types,
        enable_categorical=True,
    )
    first = (rounds[0], rounds[0] + 1)
    native, native_first = (
        np.asarray(booster.predict(dm, output_margin=True, iteration_range=r), dtype=np.float32).reshape(
            BASE_PROBE_ROWS, forest.n_outputs
        )
        for r in (rounds, first)
    )
    first_trees = forest.n_trees // max(rounds[1] - rounds[0], 1)  # the trees of one round
    ft = ForestTensors(forest, torch.device("cpu"))
    leaf_values = (
        ft.value[traverse(ft, torch.as_tensor(rows))].to(torch.float32).numpy()
    )  # [rows, trees, outs]
    stored = json.loads(booster.save_raw("json"))["learner"]["learner_model_param"]["base_score"]
    scores = np.atleast_1d(np.asarray(json.loads(stored), dtype=np.float32))  # "[4.16E-1]" or "5E-1"
    base = np.zeros(forest.n_outputs)
    one = np.float32(1.0)
    for o in range(forest.n_outputs):
        p = scores[min(o, scores.size - 1)]
        with np.errstate(all="ignore"):  # links undefined for this p are simply not exact
            centres = [p, -np.log(one / p - one), np.log(p)]
        centres.append(np.float32(native[0, o] - _sum32(np.float32(0.0), leaf_values[:1, :, o])[0]))
        candidates = []
        for c0 in (np.float32(c) for c in centres if np.isfinite(c)):
            candidates.append(c0)
            for direction in (np.float32(np.inf), np.float32(-np.inf)):
                c = c0
                for _ in range(BASE_PROBE_ULPS):
                    c = np.nextafter(c, direction)
                    candidates.append(c)
        errors = []
        for c in candidates:
            off_all = _sum32(c, leaf_values[:, :, o]) - native[:, o]
            off_first = _sum32(c, leaf_values[:, :first_trees, o]) - native_first[:, o]
            errors.append((np.count_nonzero(off_all) + np.count_nonzero(off_first), np.abs(off_all).max()))
        base[o] = float(candidates[min(range(len(candidates)), key=errors.__getitem__)])  # first of equals
    return base


def _sum32(start: np.float32, values: np.ndarray) -> np.ndarray:
    """start + values[:, 0] + values[:, 1] + ..., in float32 in that order (XGBoost's), per row."""
    acc = np.full(values.shape[0], start, dtype=np.float32)
    for t in range(values.shape[1]):
        acc += values[:, t]
    return acc
