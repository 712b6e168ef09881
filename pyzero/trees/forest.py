"""The forest IR: every tree of an ensemble as flat node arrays (structure of arrays).

Note [Exact thresholds]
A native library compares a float32 feature value x with a threshold t. For float32 x and a float64
t, `x <= t` holds exactly when `x <= round_down_to_f32(t)`, and `x < t` exactly when
`x < round_up_to_f32(t)`. Rounding t to float32 by round-to-nearest instead (what other converters
do) flips the decision for the x that lie between the two roundings. threshold32 stores the directed
rounding for its node's comparison kind, so float32 kernels reproduce the native decisions exactly.

Note [Categorical splits]
A categorical node (cmp CMP_CAT_IN_LEFT or CMP_CAT_IN_RIGHT) tests the value x of its feature in
three steps, with the forest's domain `cat_domain` = (lo, hi, invalid):
1. NaN is missing and follows default_left (LightGBM nodes are converted with default_left False).
2. x outside [lo, hi) goes where `invalid` says: CAT_INVALID_LEFT, CAT_INVALID_RIGHT or
   CAT_INVALID_DEFAULT (the node's default_left).
3. c = trunc(x) is in the node's set when c < 32 * words and bit c % 32 of word c // 32 of
   cat_bits[cat_set] is 1. A category in the set goes left for CMP_CAT_IN_LEFT (scikit-learn,
   LightGBM) and right for CMP_CAT_IN_RIGHT (XGBoost); every other valid category the other way.
The libraries map onto it as: XGBoost [0, 2**24) invalid left; LightGBM (-1, 2**31) invalid right
(it truncates toward zero, so -0.5 is category 0); scikit-learn [0, 2**31) invalid default, after its
input encoding (below) has made every value a code < 256 or NaN. Every domain ends at or below 2**31,
so trunc(x) fits an int32.
Input encoding: `categories` maps a feature to the category values the model was trained on, and
its code is the position in that list. DataFrame columns of pandas category dtype are always
encoded (unknown categories become NaN, or an error when `unknown_category` is "error", as XGBoost
raises); `encode_numeric` says whether numeric columns are encoded too (scikit-learn's
HistGradientBoosting maps every categorical input through its OrdinalEncoder, unknown -> NaN).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Format tag of saved forests (bump when the arrays or their meaning change).
FOREST_FORMAT = "pyzero.trees.Forest/2"
# Per-node vectors (shape [nodes]) and all arrays a saved forest holds.
NODE_FIELDS = (
    "feature", "threshold32", "threshold64", "left", "right", "default_left", "cmp", "missing", "leaf_id",
    "cat_set",
)  # fmt: skip
ARRAY_FIELDS = (*NODE_FIELDS, "value", "roots", "depth", "base", "cat_bits", "cat_domain")

# Comparison kinds: which test sends a (non-missing) value to the left child.
CMP_LE = 0  # x <= threshold goes left (scikit-learn, LightGBM)
CMP_LT = 1  # x < threshold goes left (XGBoost)
CMP_CAT_IN_LEFT = 2  # a category in the node's set goes left (Note [Categorical splits])
CMP_CAT_IN_RIGHT = 3  # a category in the node's set goes right (XGBoost)
NUMERIC_CMPS = (CMP_LE, CMP_LT)
# Where a categorical value outside the forest's domain goes (Note [Categorical splits]).
CAT_INVALID_LEFT = 0
CAT_INVALID_RIGHT = 1
CAT_INVALID_DEFAULT = 2
# Default domain (no categorical nodes, or scikit-learn's encoded codes): [0, 2**31), invalid default.
NO_CAT_DOMAIN = (0.0, float(2**31), float(CAT_INVALID_DEFAULT))
# Missing-value kinds: which inputs take the default direction instead of the comparison.
MISSING_NAN = 0  # NaN is missing (scikit-learn, XGBoost, LightGBM missing_type NaN)
MISSING_NONE = 1  # NaN is read as 0.0 and compared (LightGBM missing_type None)
MISSING_ZERO = 2  # NaN and |x| <= ZERO_THRESHOLD are missing (LightGBM missing_type Zero)
ZERO_THRESHOLD = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (a float constant)
AGGREGATIONS = ("sum", "mean")
POST_TRANSFORMS = ("identity", "sigmoid", "softmax", "exp", "isolation", "hinge", "softplus")


def round_down_f32(t: np.ndarray) -> np.ndarray:
    """Largest float32 <= t (elementwise, float64 in); see Note [Exact thresholds]."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(over="ignore"):  # beyond FLT_MAX: +-inf, then the directed step fixes the side
        r = t.astype(np.float32)
    above = r.astype(np.float64) > t
    r[above] = np.nextafter(r[above], np.float32(-np.inf))
    return r


def round_up_f32(t: np.ndarray) -> np.ndarray:
    """Smallest float32 >= t (elementwise, float64 in); see Note [Exact thresholds]."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(over="ignore"):  # beyond FLT_MAX: +-inf, then the directed step fixes the side
        r = t.astype(np.float32)
    below = r.astype(np.float64) < t
    r[below] = np.nextafter(r[below], np.float32(np.inf))
    return r


@dataclass
class Forest:
    """All trees of one ensemble. Node arrays are indexed by a global node id (trees concatenated).

    feature: int32 [nodes], feature index tested at a split node; -1 at a leaf.
    threshold32: float32 [nodes], the split threshold rounded as Note [Exact thresholds] says.
    threshold64: float64 [nodes], the native threshold (for float64 comparisons).
    left, right: int32 [nodes], global ids of the children; a leaf points to itself in both, so a
        traversal can keep stepping at a leaf without moving.
    default_left: bool [nodes], where a missing (NaN) value goes.
    cmp: int8 [nodes], CMP_LE or CMP_LT (numeric), CMP_CAT_IN_LEFT or CMP_CAT_IN_RIGHT (categorical).
    missing: int8 [nodes], MISSING_NAN, MISSING_NONE or MISSING_ZERO.
    leaf_id: int32 [nodes], the number the native apply() reports for a leaf (its local node id, or
        LightGBM's leaf_index).
    cat_set: int32 [nodes], row of cat_bits holding a categorical node's set; -1 elsewhere.
    value: float64 [nodes, n_outputs], what a leaf adds to the outputs (zero at split nodes), already
        multiplied by its tree's weight and any learning rate.
    roots: int32 [trees], global id of each tree's root; depth: int32 [trees], longest root-leaf path.
    cat_bits: uint32 [sets, words], category bitsets (Note [Categorical splits]); [0, 1] without any.
    cat_domain: float64 [3], (lo, hi, invalid) of Note [Categorical splits].
    n_features: features the model was fitted on. base: float64 [n_outputs], added to the sum.
    aggregation: "sum" (boosting) or "mean" (averaging ensembles: sum / mean_divisor, the trees).
    post_transform: "identity", "sigmoid" (binary: one output -> P(class 1)), "softmax", "exp",
        "isolation" (IsolationForest: score = -2 ** (-sum / extra["denominator"])), "hinge" (XGBoost's
        binary:hinge: P(class 1) = 1 where the sum is > 0, else 0), or "softplus" (LightGBM's
        cross_entropy_lambda: log1p(exp(sum))).
    classes: class labels for classifiers (predict returns classes[argmax]), else None.
    categories: {feature: known category values} for input encoding (Note [Categorical splits]);
    encode_numeric: encode numeric categorical columns too; unknown_category: "missing" or "error".
    """

    feature: np.ndarray
    threshold32: np.ndarray
    threshold64: np.ndarray
    left: np.ndarray
    right: np.ndarray
    default_left: np.ndarray
    cmp: np.ndarray
    missing: np.ndarray
    leaf_id: np.ndarray
    cat_set: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    depth: np.ndarray
    n_features: int
    base: np.ndarray
    cat_bits: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), dtype=np.uint32))
    cat_domain: np.ndarray = field(default_factory=lambda: np.asarray(NO_CAT_DOMAIN))
    aggregation: str = "sum"
    post_transform: str = "identity"
    classes: np.ndarray | None = None
    source: str = ""
    categories: dict[int, list] = field(default_factory=dict)
    encode_numeric: bool = False
    unknown_category: str = "missing"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.feature.shape[0]
        for name in NODE_FIELDS:
            if getattr(self, name).shape != (n,):
                raise ValueError(f"Forest.{name} must have shape ({n},), got {getattr(self, name).shape}")
        if self.value.ndim != 2 or self.value.shape[0] != n:
            raise ValueError(f"Forest.value must have shape ({n}, n_outputs), got {self.value.shape}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"Forest.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.post_transform not in POST_TRANSFORMS:
            raise ValueError(
                f"Forest.post_transform must be one of {POST_TRANSFORMS}, got {self.post_transform!r}"
            )
        cat = (self.cmp == CMP_CAT_IN_LEFT) | (self.cmp == CMP_CAT_IN_RIGHT)
        if np.any(cat != (self.cat_set >= 0)) or np.any(self.cat_set >= self.cat_bits.shape[0]):
            raise ValueError("Forest.cat_set must name a cat_bits row exactly at the categorical nodes")
        if self.unknown_category not in ("missing", "error"):
            raise ValueError(
                f"Forest.unknown_category must be 'missing' or 'error', got {self.unknown_category!r}"
            )

    @property
    def has_categorical(self) -> bool:
        return bool((self.cat_set >= 0).any())

    def save(self, path: str | Path) -> None:
        """Writes the forest as one .npz of plain arrays plus JSON metadata (no pickles)."""
        meta = {
            "format": FOREST_FORMAT,
            "n_features": self.n_features,
            "aggregation": self.aggregation,
            "post_transform": self.post_transform,
            "source": self.source,
            "categories": [[int(f), list(v)] for f, v in self.categories.items()],
            "encode_numeric": self.encode_numeric,
            "unknown_category": self.unknown_category,
            "extra": self.extra,
        }
        arrays = {k: getattr(self, k) for k in ARRAY_FIELDS}
        if self.classes is not None:
            arrays["classes"] = np.asarray(self.classes)
        np.savez(path, meta=np.array(json.dumps(meta)), **arrays)

    @staticmethod
    def load(path: str | Path) -> Forest:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise ValueError(f"{path} is not a pyzero forest (no metadata)")
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FOREST_FORMAT:
                raise ValueError(
                    f"{path} has format {meta.get('format')!r}; this pyzero reads {FOREST_FORMAT!r}"
                )
            arrays = {k: z[k] for k in ARRAY_FIELDS}
            classes = z["classes"] if "classes" in z.files else None
        return Forest(
            **arrays,
            n_features=meta["n_features"],
            aggregation=meta["aggregation"],
            post_transform=meta["post_transform"],
            classes=classes,
            source=meta["source"],
            categories={int(f): v for f, v in meta["categories"]},
            encode_numeric=meta["encode_numeric"],
            unknown_category=meta["unknown_category"],
            extra=meta["extra"],
        )

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    @property
    def mean_divisor(self) -> int:
        """What a "mean" aggregation divides the sum by: the trees, or the rounds when each round has one
        tree per output (LightGBM's multiclass rf: extra["trees_per_round"])."""
        return max(1, self.n_trees // int(self.extra.get("trees_per_round", 1)))

    @property
    def n_outputs(self) -> int:
        return int(self.value.shape[1])

    @property
    def max_depth(self) -> int:
        return int(self.depth.max()) if self.depth.size else 0


def concat_trees(trees: list[dict], cat_sets: list[np.ndarray] | None = None, **forest_fields) -> Forest:
    """Builds a Forest from per-tree dicts of local node arrays (children local, -1 at leaves).

    A tree's optional "cmp" may be an array (categorical nodes) and "cat_set" (int, -1 numeric)
    indexes `cat_sets`, the sorted category values of each set (turned into cat_bits rows)."""
    keys = ("feature", "t64", "cmp", "left", "right", "dl", "value", "missing", "leaf_id", "cat_set")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    roots, depths, offset = [], [], 0
    for t in trees:
        n = t["feature"].shape[0]
        ids = np.arange(n, dtype=np.int64) + offset
        leaf = t["left"] < 0
        parts["feature"].append(np.where(leaf, -1, t["feature"]).astype(np.int32))
        parts["t64"].append(np.where(leaf, 0.0, t["threshold"]).astype(np.float64))
        parts["cmp"].append(np.broadcast_to(np.asarray(t["cmp"], dtype=np.int8), (n,)))
        parts["left"].append(np.where(leaf, ids, t["left"] + offset).astype(np.int32))
        parts["right"].append(np.where(leaf, ids, t["right"] + offset).astype(np.int32))
        parts["dl"].append(np.asarray(t["default_left"], dtype=bool))
        parts["value"].append(np.where(leaf[:, None], t["value"], 0.0).astype(np.float64))
        parts["missing"].append(
            np.broadcast_to(np.asarray(t.get("missing", MISSING_NAN), dtype=np.int8), (n,))
        )
        parts["leaf_id"].append(np.asarray(t.get("leaf_id", np.arange(n)), dtype=np.int32))
        cat_set = np.broadcast_to(np.asarray(t.get("cat_set", -1), dtype=np.int32), (n,))
        parts["cat_set"].append(np.where(leaf, -1, cat_set))
        roots.append(offset)
        depths.append(_depth(t["left"], t["right"]))
        offset += n
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    t32 = np.where(cat["cmp"] == CMP_LE, round_down_f32(cat["t64"]), round_up_f32(cat["t64"]))
    numeric = np.isin(cat["cmp"], NUMERIC_CMPS)
    cat["t64"] = np.where(numeric, cat["t64"], 0.0)
    t32 = np.where(numeric, t32, 0.0)
    return Forest(
        feature=cat["feature"],
        threshold32=t32.astype(np.float32),
        threshold64=cat["t64"],
        left=cat["left"],
        right=cat["right"],
        default_left=cat["dl"],
        cmp=cat["cmp"],
        missing=cat["missing"],
        leaf_id=cat["leaf_id"],
        value=cat["value"],
        roots=np.asarray(roots, dtype=np.int32),
        depth=np.asarray(depths, dtype=np.int32),
        cat_set=cat["cat_set"],
        cat_bits=category_bitsets(cat_sets or []),
        **forest_fields,
    )


def category_bitsets(sets: list[np.ndarray]) -> np.ndarray:
    """uint32 [len(sets), words]: row i has bit c set for every category c in sets[i] (c >= 0)."""
    top = max((int(np.max(s)) for s in sets if len(s)), default=0)
    bits = np.zeros((len(sets), top // 32 + 1), dtype=np.uint32)
    for i, s in enumerate(sets):
        c = np.asarray(s, dtype=np.int64)
        np.bitwise_or.at(bits[i], c // 32, (np.uint32(1) << (c % 32).astype(np.uint32)))
    return bits


def leaf_mask(forest: Forest) -> np.ndarray:
    """bool [nodes]: the leaves (a leaf's left and right are its own id)."""
    ids = np.arange(forest.feature.shape[0])
    return (forest.left == ids) & (forest.right == ids)


def leaves_per_tree(forest: Forest) -> np.ndarray:
    """int64 [trees]: how many leaves each tree has."""
    return np.bincount(tree_of(forest)[leaf_mask(forest)], minlength=forest.n_trees)


def levels(forest: Forest) -> list[np.ndarray]:
    """Node ids level by level, every level in tree order (children in parent order, left first)."""
    internal = ~leaf_mask(forest)
    out, cur = [], forest.roots.astype(np.int64)
    while cur.size:
        out.append(cur)
        inner = cur[internal[cur]]
        cur = np.stack([forest.left[inner], forest.right[inner]], axis=1).reshape(-1).astype(np.int64)
    return out


def tree_of(forest: Forest) -> np.ndarray:
    """The tree of every node (trees hold consecutive node ranges from their roots on)."""
    return np.searchsorted(forest.roots, np.arange(forest.feature.shape[0]), side="right") - 1


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    depth = np.zeros(left.shape[0], dtype=np.int64)
    for i in range(left.shape[0]):  # parents precede children in every supported library's order
        for c in (left[i], right[i]):
            if c >= 0:
                depth[c] = depth[i] + 1
    return int(depth.max()) if depth.size else 0
