"""LightGBM models -> Forest, read from Booster.dump_model() JSON.

LightGBM reads inputs with |x| <= 1e-35f as 0.0 and clamps +-inf to +-1e300 (so +inf goes left at
its 1e300 "everything" thresholds; in float32, +-FLT_MAX against the rounded-down threshold does the
same), then compares double x <= double threshold;
decision_type's missing type says which inputs take the default direction (None: NaN read as 0.0;
Zero: NaN and |x| <= 1e-35; NaN: NaN). Tree i adds to
class i % num_tree_per_iteration; the initial score is folded into the first trees. Boosting "rf"
averages over iterations.
"""

from __future__ import annotations

import numpy as np

from pyzero.trees.forest import (
    CAT_INVALID_RIGHT,
    CMP_CAT_IN_LEFT,
    CMP_LE,
    MISSING_NAN,
    MISSING_NONE,
    MISSING_ZERO,
    Forest,
    concat_trees,
)

# LightGBM's categorical domain: static_cast<int>(x) must be >= 0, so x in (-1, 2**31) (truncation
# toward zero: -0.5 is category 0); NaN and everything else go right. Note [Categorical splits].
LGB_CAT_DOMAIN = (
    float(np.nextafter(np.float32(-1.0), np.float32(0.0))),
    float(2**31),
    float(CAT_INVALID_RIGHT),
)

SUPPORTED = ("LGBMClassifier", "LGBMRegressor", "LGBMRanker", "Booster")
MISSING = {"None": MISSING_NONE, "Zero": MISSING_ZERO, "NaN": MISSING_NAN}


def _objective(spec: str) -> tuple[str, dict]:
    """(post-transform, extra) for LightGBM's objective string, e.g. 'binary sigmoid:1'."""
    name, *params = spec.split()
    opts = dict(p.split(":", 1) for p in params if ":" in p)
    if name == "binary":
        return "sigmoid", {"sigmoid_scale": float(opts.get("sigmoid", 1.0))}
    if name == "multiclass":
        return "softmax", {}
    if name in ("cross_entropy", "xentropy"):  # its output: 1 / (1 + exp(-score))
        return "sigmoid", {}
    if name in ("cross_entropy_lambda", "xentlambda"):  # its output: log1p(exp(score))
        return "softplus", {}
    if name == "multiclassova":
        return "sigmoid", {"sigmoid_scale": float(opts.get("sigmoid", 1.0))}
    if name in (
        "regression",
        "regression_l1",
        "huber",
        "fair",
        "quantile",
        "mape",
        "lambdarank",
        "rank_xendcg",
    ):
        return "identity", {}
    if name in ("poisson", "gamma", "tweedie"):
        return "exp", {}
    raise TypeError(f"LightGBM objective {spec!r} is not supported")


def _flatten(root: dict, n_groups: int, group: int, cat_sets: list) -> dict:
    """Preorder node arrays of one dump_model() tree; categorical sets are appended to cat_sets."""
    feature, threshold, left, right, dl, missing, value, leaf_id = [], [], [], [], [], [], [], []
    cmp, cat_set = [], []

    def visit(node: dict) -> int:
        i = len(feature)
        for lst, v in (
            (feature, 0), (threshold, 0.0), (left, -1), (right, -1), (dl, False), (missing, 0), (cmp, CMP_LE),
            (cat_set, -1),
        ):  # fmt: skip
            lst.append(v)
        value.append(np.zeros(n_groups))
        leaf_id.append(0)
        if "leaf_value" in node or "split_feature" not in node:
            value[i][group] = node.get("leaf_value", 0.0)
            leaf_id[i] = node.get("leaf_index", 0)
            return i
        feature[i] = node["split_feature"]
        if node["decision_type"] == "==":  # NaN goes right whatever the missing type says
            cmp[i], cat_set[i], missing[i] = CMP_CAT_IN_LEFT, len(cat_sets), MISSING_NAN
            cat_sets.append(np.asarray([int(c) for c in str(node["threshold"]).split("||")], dtype=np.int64))
        else:
            threshold[i] = float(node["threshold"])
            dl[i] = bool(node["default_left"])
            missing[i] = MISSING[node["missing_type"]]
        left[i] = visit(node["left_child"])
        right[i] = visit(node["right_child"])
        return i

    visit(root)
    return {
        "feature": np.asarray(feature, dtype=np.int64),
        "threshold": np.asarray(threshold, dtype=np.float64),
        "left": np.asarray(left, dtype=np.int64),
        "right": np.asarray(right, dtype=np.int64),
        "default_left": np.asarray(dl, dtype=bool),
        "missing": np.asarray(missing, dtype=np.int8),
        "leaf_id": np.asarray(leaf_id, dtype=np.int32),
        "cmp": np.asarray(cmp, dtype=np.int8),
        "cat_set": np.asarray(cat_set, dtype=np.int64),
        "value": np.stack(value),
    }


def _categories(doc: dict) -> dict[int, list]:
    """{feature: training categories} of DataFrame-trained models: LightGBM pairs its
    pandas_categorical lists, in order, with the categorical features (those whose feature_infos
    list values)."""
    lists = doc.get("pandas_categorical") or []
    if not lists:  # trained on numbers: category codes are the inputs themselves
        return {}
    infos = doc.get("feature_infos", {})
    cat_features = [
        f for f, name in enumerate(doc.get("feature_names", [])) if infos.get(name, {}).get("values")
    ]
    return {
        f: [c.item() if isinstance(c, np.generic) else c for c in cats]
        for f, cats in zip(cat_features, lists, strict=True)
    }


def convert(model, num_iteration: int | None = None) -> Forest:
    booster = model.booster_ if hasattr(model, "booster_") else model
    if num_iteration is None:
        best = getattr(booster, "best_iteration", 0) or 0
        num_iteration = best if best > 0 else None
    doc = booster.dump_model(num_iteration=num_iteration if num_iteration is not None else -1)
    k = int(doc["num_tree_per_iteration"])
    name = type(model).__name__
    objective = doc.get("objective", "custom")  # a Python callable leaves none: predictions are raw
    if objective == "custom" and name == "LGBMClassifier":
        raise TypeError(
            "LGBMClassifier with a custom objective is not supported: LightGBM's predict_proba returns raw "
            "scores for it; compile model.booster_ for those"
        )
    post, extra = ("identity", {}) if objective == "custom" else _objective(objective)
    cat_sets: list[np.ndarray] = []
    trees = [_flatten(t["tree_structure"], k, i % k, cat_sets) for i, t in enumerate(doc["tree_info"])]
    classes = getattr(model, "classes_", None) if name == "LGBMClassifier" else None
    average = bool(doc.get("average_output", False))
    forest = concat_trees(
        trees,
        cat_sets,
        n_features=int(doc["max_feature_idx"]) + 1,
        cat_domain=np.asarray(LGB_CAT_DOMAIN),
        categories=_categories(doc),
        base=np.zeros(k),
        aggregation="mean" if average else "sum",  # boosting "rf": the sum over rounds, then / rounds
        post_transform=post,
        classes=None if classes is None else np.asarray(classes),
        source=name,
        extra={
            "objective": objective,
            "zero_tiny_inputs": True,
            "clamp_inf": True,
            "trees_per_round": k,
            "raw_is_sum": average,  # rf: its raw scores are the sum of the trees, its outputs the mean's
            **extra,
        },
    )
    return forest
