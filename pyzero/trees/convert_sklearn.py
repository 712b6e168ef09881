"""scikit-learn tree ensembles -> Forest (see the semantics table in DESIGN.md section 4).

scikit-learn casts inputs to float32 and sends x left when x <= threshold (float64); NaN follows
tree_.missing_go_to_left.
"""

from __future__ import annotations

import numpy as np

from pyzero.trees.forest import CMP_CAT_IN_LEFT, CMP_LE, Forest, concat_trees

# scikit-learn's categorical bitsets: 8 uint32 words (categories are uint8 codes < 256).
HGB_CATEGORY_CODES = 256

SUPPORTED = (
    "DecisionTreeClassifier",
    "DecisionTreeRegressor",
    "ExtraTreeClassifier",
    "ExtraTreeRegressor",
    "RandomForestClassifier",
    "RandomForestRegressor",
    "ExtraTreesClassifier",
    "ExtraTreesRegressor",
    "GradientBoostingClassifier",
    "GradientBoostingRegressor",
    "IsolationForest",
    "HistGradientBoostingClassifier",
    "HistGradientBoostingRegressor",
)


def _tree(tree, value: np.ndarray) -> dict:
    """Local node arrays of one fitted sklearn Tree with the given per-node output vectors."""
    return {
        "feature": tree.feature,
        "threshold": tree.threshold,
        "left": tree.children_left,
        "right": tree.children_right,
        "default_left": tree.missing_go_to_left.astype(bool),
        "cmp": CMP_LE,
        "value": value,
    }


# How far from 1 the class values of a node may sum and still be the fractions scikit-learn >= 1.4 stores
# (and predict_proba returns as they are); older versions store weighted counts and divide by their sum.
CLASS_FRACTION_TOLERANCE = 1e-9


def _classifier_value(tree) -> np.ndarray:
    """Per-node class distribution as predict_proba reads it (single output): the stored fractions as
    they are (a 3-class forest's sums of them are 1 only to an ulp), or counts divided by their sum."""
    v = tree.value[:, 0, :].astype(np.float64)
    s = v.sum(axis=1, keepdims=True)
    if np.all(np.abs(s[s > 0] - 1.0) <= CLASS_FRACTION_TOLERANCE):
        return v
    return np.divide(v, s, out=np.zeros_like(v), where=s > 0)


def _regressor_value(tree) -> np.ndarray:
    return tree.value[:, :, 0].astype(np.float64)


def convert(model) -> Forest:
    name = type(model).__name__
    n_features = int(model.n_features_in_)
    if name.startswith("GradientBoosting"):
        return _gradient_boosting(model, n_features)
    if name == "IsolationForest":
        return _isolation_forest(model, n_features)
    if name.startswith("HistGradientBoosting"):
        return _hist_gradient_boosting(model, n_features)
    estimators = model.estimators_ if hasattr(model, "estimators_") else [model]
    is_clf = hasattr(model, "classes_")
    if is_clf and getattr(model, "n_outputs_", 1) != 1:
        raise TypeError(f"{name} with several outputs (multi-output classification) is not supported")
    trees = [
        _tree(e.tree_, _classifier_value(e.tree_) if is_clf else _regressor_value(e.tree_))
        for e in estimators
    ]
    n_out = trees[0]["value"].shape[1]
    return concat_trees(
        trees,
        n_features=n_features,
        base=np.zeros(n_out),
        aggregation="mean",
        post_transform="identity",
        classes=np.asarray(model.classes_) if is_clf else None,
        source=name,
        extra={"kind": "classifier" if is_clf else "regressor"},
    )


def _gradient_boosting(model, n_features: int) -> Forest:
    name = type(model).__name__
    stages = model.estimators_  # (n_stages, K) DecisionTreeRegressors
    k = stages.shape[1]
    lr = float(model.learning_rate)
    trees = []
    for stage in stages:
        for c, est in enumerate(stage):
            v = np.zeros((est.tree_.node_count, k))
            v[:, c] = lr * est.tree_.value[:, 0, 0]  # the same product sklearn forms per stage
            trees.append(_tree(est.tree_, v))
    base = np.asarray(
        model._raw_predict_init(np.zeros((1, n_features), dtype=np.float32))[0], dtype=np.float64
    )
    is_clf = name.endswith("Classifier")
    extra = {"kind": "classifier" if is_clf else "regressor", **SKLEARN_SOFTMAX}
    post = "identity"
    if is_clf:
        if model.loss not in GB_CLASSIFIER_SIGMOID_SCALE:
            supported = sorted(GB_CLASSIFIER_SIGMOID_SCALE)
            raise ValueError(f"{name} with loss {model.loss!r} is not supported; supported: {supported}")
        post = "sigmoid" if k == 1 else "softmax"
        if GB_CLASSIFIER_SIGMOID_SCALE[model.loss] != 1.0:
            extra["sigmoid_scale"] = GB_CLASSIFIER_SIGMOID_SCALE[model.loss]
    return concat_trees(
        trees,
        n_features=n_features,
        base=base,
        aggregation="sum",
        post_transform=post,
        classes=np.asarray(model.classes_) if is_clf else None,
        source=name,
        extra=extra,
    )


def _isolation_forest(model, n_features: int) -> Forest:
    """Leaf value = path length to the leaf + c(samples in the leaf) - 1 (sklearn's per-tree depth);
    score_samples = -2 ** (-sum / (n_trees * c(max_samples))), decision_function = score - offset_."""
    from sklearn.ensemble._iforest import _average_path_length

    trees = []
    for i, (est, features) in enumerate(zip(model.estimators_, model.estimators_features_, strict=True)):
        t = _tree(est.tree_, np.zeros((est.tree_.node_count, 1)))
        t["feature"] = np.where(
            est.tree_.feature >= 0, np.asarray(features)[np.maximum(est.tree_.feature, 0)], -1
        )
        dpl = np.asarray(model._decision_path_lengths[i], dtype=np.float64)
        apl = np.asarray(model._average_path_length_per_tree[i], dtype=np.float64)
        t["value"] = (dpl + apl - 1.0)[:, None]
        trees.append(t)
    denominator = len(model.estimators_) * float(_average_path_length(np.array([model._max_samples]))[0])
    return concat_trees(
        trees,
        n_features=n_features,
        base=np.zeros(1),
        aggregation="sum",
        post_transform="isolation",
        source="IsolationForest",
        extra={"kind": "outlier", "denominator": denominator, "offset": float(model.offset_)},
    )


# HistGradientBoosting loss -> post-transform of the raw prediction.
# scikit-learn's multiclass probabilities are sklearn.utils.extmath.softmax: numpy's max, exp and sum
# (CompiledForest takes the same steps on CPU tensors, so its probabilities equal scikit-learn's).
SKLEARN_SOFTMAX = {"softmax": "numpy"}
# GradientBoostingClassifier loss -> the factor of its sigmoid: P(1) = expit(factor * raw) (log_loss:
# HalfBinomialLoss; exponential: ExponentialLoss, whose HalfLogitLink inverts as expit(2 * raw)).
GB_CLASSIFIER_SIGMOID_SCALE = {"log_loss": 1.0, "exponential": 2.0}
# HistGradientBoosting's log link inverts with numpy's exp (LogLink.inverse), not libm's.
SKLEARN_EXP = {"exp": "numpy"}
HGB_POST = {
    "HalfSquaredError": "identity",
    "AbsoluteError": "identity",
    "PinballLoss": "identity",
    "HuberLoss": "identity",
    "HalfGammaLoss": "exp",
    "HalfPoissonLoss": "exp",
    "HalfBinomialLoss": "sigmoid",
    "HalfMultinomialLoss": "softmax",
}


def _hist_gradient_boosting(model, n_features: int) -> Forest:
    """scikit-learn compares float64 x <= num_threshold (float64) here, NaN follows missing_go_to_left;
    raw = baseline + sum of leaf values. Categorical features go through its OrdinalEncoder (unknown
    -> NaN), which also moves them to the front; see Note [Categorical splits] (forest.py)."""
    loss = type(model._loss).__name__
    if loss not in HGB_POST:
        raise TypeError(
            f"HistGradientBoosting with loss {loss} is not supported; supported: {sorted(HGB_POST)}"
        )
    column, categories = _hgb_columns(model, n_features)
    known_bits, f_idx_map = model._bin_mapper.make_known_categories_bitsets()
    k = len(model._predictors[0])
    trees, cat_sets = [], []
    for iteration in model._predictors:
        for c, predictor in enumerate(iteration):
            nodes = predictor.nodes
            leaf = nodes["is_leaf"].astype(bool)
            value = np.zeros((nodes.shape[0], k))
            value[:, c] = nodes["value"]
            cat = nodes["is_categorical"].astype(bool) & ~leaf
            cat_set = np.full(nodes.shape[0], -1)
            for i in np.flatnonzero(cat):
                left = _bits_to_codes(predictor.raw_left_cat_bitsets[nodes["bitset_idx"][i]])
                known = _bits_to_codes(known_bits[f_idx_map[nodes["feature_idx"][i]]])
                if nodes["missing_go_to_left"][i]:  # unknown codes follow the missing direction
                    left = np.union1d(left, np.setdiff1d(np.arange(HGB_CATEGORY_CODES), known))
                cat_set[i] = len(cat_sets)
                cat_sets.append(left)
            trees.append(
                {
                    "feature": column[nodes["feature_idx"].astype(np.int64)],
                    "threshold": nodes["num_threshold"].astype(np.float64),
                    "left": np.where(leaf, -1, nodes["left"].astype(np.int64)),
                    "right": np.where(leaf, -1, nodes["right"].astype(np.int64)),
                    "default_left": nodes["missing_go_to_left"].astype(bool),
                    "cmp": np.where(cat, CMP_CAT_IN_LEFT, CMP_LE),
                    "cat_set": cat_set,
                    "value": value,
                }
            )
    is_clf = hasattr(model, "classes_")
    return concat_trees(
        trees,
        cat_sets,
        n_features=n_features,
        base=np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1),
        aggregation="sum",
        post_transform=HGB_POST[loss],
        classes=np.asarray(model.classes_) if is_clf else None,
        source=type(model).__name__,
        categories=categories,
        encode_numeric=True,
        extra={
            "kind": "classifier" if is_clf else "regressor",
            "input": "float64",
            **SKLEARN_SOFTMAX,
            **SKLEARN_EXP,
        },
    )


def _hgb_columns(model, n_features: int) -> tuple[np.ndarray, dict[int, list]]:
    """(original column of each column the trees see, {column: known categories}). scikit-learn's
    preprocessor puts the categorical columns first, then the numerical ones, each in input order."""
    if getattr(model, "_preprocessor", None) is None:
        return np.arange(n_features), {}
    is_cat = np.asarray(model.is_categorical_, dtype=bool)
    column = np.concatenate([np.flatnonzero(is_cat), np.flatnonzero(~is_cat)])
    encoder = model._preprocessor.named_transformers_["encoder"]
    categories = {}
    for col, cats in zip(np.flatnonzero(is_cat), encoder.categories_, strict=True):
        cats = list(cats)
        if (
            cats and isinstance(cats[-1], (float, np.floating)) and np.isnan(cats[-1])
        ):  # NaN: missing, not a category
            cats = cats[:-1]
        categories[int(col)] = [c.item() if isinstance(c, np.generic) else c for c in cats]
    return column, categories


def _bits_to_codes(words: np.ndarray) -> np.ndarray:
    """The category codes whose bits are set in a uint32 bitset."""
    w = np.asarray(words, dtype=np.uint32)
    bits = (w[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    return np.flatnonzero(bits.reshape(-1))
