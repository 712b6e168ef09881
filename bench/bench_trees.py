"""How fast, and how exact, is pyzero.trees against the native predictors (scikit-learn RandomForest,
XGBoost `inplace_predict`, LightGBM `predict`), treelite (tl2cgen-compiled shared library) and
Hummingbird (best of gemm / tree_trav / perf_tree_trav, torch backend), all on the same threads?

    python bench/bench_trees.py               # Hummingbird's config (500x8, batch 10k) + 100x8
    python bench/bench_trees.py --grid full   # trees {10,100,500} x depth {4,8,12} x batch {1,100,10k,1M}
    python bench/bench_trees.py --trees 10 --depths 4 --batches 1,100 --train-rows 2000
    python bench/bench_trees.py --libs xgboost,lightgbm,sklearn,hummingbird,tl2cgen --threads 2
    python bench/bench_trees.py --device cuda   # the GPU benchmark: bench_trees_gpu.py

One binary classifier per library and (trees, depth), trained once on HIGGS-like synthetic rows (28
features); the benchmark rows come from the same distribution (no NaN). Batch 1 is latency (us per call,
median), larger batches rows/s (median). Each predictor is warmed up, then called round-robin with the
others, in blocks of ~20 ms, until it has spent --budget-s (at least one call); a predictor whose call
would take more than --call-cap-s (extrapolated from the previous batch) is skipped and printed as '-',
with the reason listed above the table. Hummingbird gets its input in chunks that keep its intermediates
under --hb-mem-gb (gemm is skipped when its weights alone exceed it).

Columns: pyzero / native (the model's own library) / tl2cgen / Hummingbird (best strategy: gemm, tt =
tree_trav, ptt = perf_tree_trav); `x best native` and `x Hummingbird`: pyzero's speed over the fastest of
native and tl2cgen, and over Hummingbird, in the same run; `exact`: max |pyzero - native| <= 1e-6 on the
benchmark rows. Prints the table last; writes JSON and a log-log PNG (rows/s vs batch) to --out-dir.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from pyzero import trees
from pyzero.trees.compiled import BACKENDS

FEATURES = 28  # Hummingbird's benchmark configuration (HIGGS width: 21 low-level + 7 high-level)
PARTICLES = 7
TRAIN_ROWS = 20_000
EXACT_TOL = 1e-6
SEED = 0
THREADS = 2
HB_CONFIG = {(500, 8): (10_000,)}  # Hummingbird's published CPU configuration
DEFAULT_CONFIGS = {**HB_CONFIG, (100, 8): (1, 100, 10_000)}
GRIDS = {  # trees, depths, batches
    "small": ((10, 100), (4, 8), (1, 100, 10_000)),
    "full": ((10, 100, 500), (4, 8, 12), (1, 100, 10_000, 1_000_000)),
}
MODEL_LIBS = {"xgboost": "XGBoost", "lightgbm": "LightGBM", "sklearn": "sklearn RF"}
PEER_LIBS = ("hummingbird", "tl2cgen")
HB_STRATEGIES = {"gemm": "gemm", "tree_trav": "tt", "perf_tree_trav": "ptt"}  # name -> short label
# Timing: seconds each predictor may spend per measurement, most calls, and the cap on one call.
BUDGET_S = 1.0
MAX_CALLS = {"latency": 2000, "throughput": 100}
CALL_CAP_S = 10.0
BLOCK_S = 0.02  # consecutive calls per turn fill about this long (first one dropped), see budgeted_medians
# Hummingbird holds whole-batch intermediates: skip a strategy whose weights exceed this, and feed it
# chunks of rows small enough that its intermediates stay under it.
HB_MEM_GB = 1.0
HB_TRAV_BYTES_PER_TREE = 64  # tree_trav / perf_tree_trav: a few int64/float32 tensors per (row, tree)
TL2CGEN_MAX_NODES = 2_000_000  # generated C for bigger forests takes too long to compile here
TL2CGEN_NODES_PER_UNIT = 50_000  # at most about this many nodes per C file, so gcc's memory stays small
PLOT_LINES = {"pyzero": "pyzero", "native": "native", "tl2cgen": "tl2cgen", "hummingbird": "Hummingbird"}

Predictor = Callable[[np.ndarray], Any]
HAVE_HUMMINGBIRD = importlib.util.find_spec("hummingbird") is not None


def parse_ints(text: str) -> tuple[int, ...]:
    """'1,100,10k,1M' -> (1, 100, 10000, 1000000)."""
    scale = {"k": 1_000, "m": 1_000_000}
    out = []
    for part in text.lower().split(","):
        part = part.strip()
        out.append(int(float(part[:-1]) * scale[part[-1]]) if part[-1] in scale else int(part))
    return tuple(out)


def configs(args: argparse.Namespace) -> dict[tuple[int, int], tuple[int, ...]]:
    """{(trees, depth): batches} from --grid, with --trees/--depths/--batches overriding its axes."""
    custom = args.trees or args.depths or args.batches
    if args.grid == "default" and not custom:
        return DEFAULT_CONFIGS
    base_trees, base_depths, base_batches = GRIDS["small" if args.grid == "default" else args.grid]
    batches = args.batches or base_batches
    return {(t, d): batches for t in args.trees or base_trees for d in args.depths or base_depths}


def higgs_like(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """HIGGS-shaped float32 rows: 7 particles x (transverse momentum, pseudorapidity, azimuth) and 7
    pair masses; labels from a noisy nonlinear score of them (balanced)."""
    pt = rng.lognormal(0.0, 0.5, (rows, PARTICLES))
    eta = rng.normal(0.0, 1.2, (rows, PARTICLES))
    phi = rng.uniform(-np.pi, np.pi, (rows, PARTICLES))
    j = (np.arange(PARTICLES) + 1) % PARTICLES
    mass = np.sqrt(2 * pt * pt[:, j] * (np.cosh(eta - eta[:, j]) - np.cos(phi - phi[:, j])))
    X = np.concatenate([np.stack([pt, eta, phi], axis=2).reshape(rows, -1), mass], axis=1)
    score = np.log1p(mass[:, 0]) - np.log1p(mass[:, 3]) + 0.5 * np.sin(phi[:, 0] - phi[:, 1])
    score += 0.3 * eta[:, 2] * eta[:, 4] + 0.5 * rng.standard_normal(rows)
    return X.astype(np.float32), (score > np.median(score)).astype(int)


def train(lib: str, n_trees: int, depth: int, threads: int, X: np.ndarray, y: np.ndarray) -> Any:
    if lib == "xgboost":
        import xgboost as xgb

        model = xgb.XGBClassifier(
            n_estimators=n_trees, max_depth=depth, tree_method="hist", n_jobs=threads, random_state=SEED
        )
    elif lib == "lightgbm":
        import lightgbm as lgb

        model = lgb.LGBMClassifier(
            n_estimators=n_trees,
            max_depth=depth,
            num_leaves=2**depth - 1,
            n_jobs=threads,
            random_state=SEED,
            verbose=-1,
        )
    else:
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(
            n_estimators=n_trees, max_depth=depth, n_jobs=threads, random_state=SEED
        )
    return model.fit(X, y)


def native_predictor(lib: str, model: Any, threads: int) -> Predictor:
    """P(class 1) from the library's own fastest entry point."""
    if lib == "xgboost":
        booster = model.get_booster()
        booster.set_param({"nthread": threads})
        return lambda X: booster.inplace_predict(X)
    if lib == "lightgbm":
        booster = model.booster_
        return lambda X: booster.predict(X, num_threads=threads)
    return lambda X: model.predict_proba(X)[:, 1]


@contextlib.contextmanager
def quiet_fds() -> Iterator[None]:
    """Silences C-level stdout/stderr (treelite and tl2cgen log from C++)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def tl2cgen_predictor(lib: str, model: Any, nodes: int, threads: int, workdir: str) -> Predictor:
    """P(class 1) from the model compiled to C by tl2cgen (gcc -O3) and loaded as a shared library."""
    import tl2cgen
    import treelite

    libpath = Path(workdir) / f"{lib}.so"
    with quiet_fds():
        if lib == "xgboost":
            tl_model = treelite.frontend.from_xgboost(model.get_booster())
        elif lib == "lightgbm":
            tl_model = treelite.frontend.from_lightgbm(model.booster_)
        else:
            tl_model = treelite.sklearn.import_model(model)
        cores = os.cpu_count() or 1
        units = max(cores, nodes // TL2CGEN_NODES_PER_UNIT)
        tl2cgen.export_lib(tl_model, "gcc", libpath, params={"parallel_comp": units}, nthread=cores)
        predictor = tl2cgen.Predictor(libpath, nthread=threads)

    def predict(X: np.ndarray) -> np.ndarray:
        # [rows, targets, classes]: the last column is P(class 1) for one- and two-column outputs
        return predictor.predict(tl2cgen.DMatrix(X)).reshape(X.shape[0], -1)[:, -1]

    return predict


def hb_footprint(strategy: str, n_trees: int, depth: int) -> tuple[float, float]:
    """(weight bytes, intermediate bytes per row) of a Hummingbird strategy, upper bounds."""
    leaves = 2**depth
    if strategy == "gemm":  # [trees, internal, leaves] path matrix; node and leaf indicators per row
        return 4.0 * n_trees * leaves * leaves, 8.0 * n_trees * 2 * leaves
    return 16.0 * n_trees * 2 * leaves, float(HB_TRAV_BYTES_PER_TREE * n_trees)


def chunked(predict: Callable[[np.ndarray], np.ndarray], chunk: int, X: np.ndarray) -> np.ndarray:
    if X.shape[0] <= chunk:
        return predict(X)[:, 1]
    return np.concatenate([predict(X[i : i + chunk])[:, 1] for i in range(0, X.shape[0], chunk)])


def hummingbird_predictors(
    model: Any, n_trees: int, depth: int, mem_bytes: float
) -> tuple[dict[str, Predictor], dict[str, str], dict[str, int]]:
    """({'hb <strategy>': predictor}, {'hb <strategy>': why skipped}, {strategy: rows per chunk}) for
    Hummingbird's three tree strategies."""
    import hummingbird.ml as hb

    fns: dict[str, Predictor] = {}
    skipped: dict[str, str] = {}
    chunks: dict[str, int] = {}
    for strategy in HB_STRATEGIES:
        weights, per_row = hb_footprint(strategy, n_trees, depth)
        if weights > mem_bytes:
            skipped[f"hb {strategy}"] = f"weights ~{weights / 1e9:.1f} GB > --hb-mem-gb"
            continue
        try:
            hm = hb.convert(model, "torch", extra_config={"tree_implementation": strategy})
        except Exception as e:  # Hummingbird does not cover every model/strategy pair
            skipped[f"hb {strategy}"] = f"convert failed: {type(e).__name__}: {e}"[:160]
            continue
        chunks[strategy] = max(1, int(mem_bytes // per_row))
        fns[f"hb {strategy}"] = functools.partial(chunked, hm.predict_proba, chunks[strategy])
    return fns, skipped, chunks


def measure(
    fns: dict[str, Predictor], skipped: dict[str, str], X: np.ndarray, batches: tuple[int, ...], args
) -> list[dict]:
    """One record per batch: {name: {seconds, calls, rows_per_s, max_diff_vs_native} or {skipped}}."""
    rates: dict[str, float] = {}  # rows/s at the previous batch (> 1), to extrapolate the next call
    records = []
    for batch in sorted(batches):
        Xb = X[:batch]
        results: dict[str, dict] = {name: {"skipped": why} for name, why in skipped.items()}
        outputs: dict[str, np.ndarray] = {}
        timed: dict[str, Callable[[], object]] = {}
        block: dict[str, int] = {}
        for name, fn in fns.items():
            estimate = batch / rates[name] if name in rates else 0.0
            if estimate > args.call_cap_s:
                results[name] = {"skipped": f"~{estimate:.2g} s per call > --call-cap-s"}
                continue
            t0 = time.perf_counter()
            outputs[name] = np.asarray(fn(Xb), dtype=np.float64).reshape(-1)  # warm-up, and the answer
            warm_s = time.perf_counter() - t0
            if warm_s > args.call_cap_s:  # one call is all it gets
                results[name] = {"seconds": warm_s, "calls": 1}
            else:
                timed[name] = functools.partial(fn, Xb)
                block[name] = max(1, int(BLOCK_S / warm_s))
        kind = "latency" if batch == 1 else "throughput"
        med, calls = common.budgeted_medians(timed, "cpu", args.budget_s, MAX_CALLS[kind], block)
        results.update({name: {"seconds": med[name], "calls": calls[name]} for name in med})
        for name, out in outputs.items():
            r = results[name]
            r["rows_per_s"] = batch / r["seconds"]
            if batch > 1:  # batch-1 latency is mostly fixed cost: it would overestimate bigger calls
                rates[name] = r["rows_per_s"]
            if "native" in outputs:
                r["max_diff_vs_native"] = float(np.max(np.abs(out - outputs["native"])))
        records.append({"batch": batch, "results": results})
    return records


def summarize(rec: dict) -> None:
    """Adds the best Hummingbird strategy, the best native peer, pyzero's ratios and `exact`."""
    res = rec["results"]

    def best(names: list[str]) -> tuple[str | None, float | None]:
        rated = [(res[n]["rows_per_s"], n) for n in names if "rows_per_s" in res.get(n, {})]
        return (max(rated)[1], max(rated)[0]) if rated else (None, None)

    hb_name, hb_rate = best([f"hb {s}" for s in HB_STRATEGIES])
    native_name, native_rate = best(["native", "tl2cgen"])
    native_name = rec["model"].split()[0] if native_name == "native" else native_name
    ours = res.get("pyzero", {}).get("rows_per_s")
    rec["hummingbird"] = {"strategy": hb_name and hb_name[3:], "rows_per_s": hb_rate}
    rec["best_native"] = {"peer": native_name, "rows_per_s": native_rate}
    rec["x_best_native"] = ours / native_rate if ours and native_rate else None
    rec["x_hummingbird"] = ours / hb_rate if ours and hb_rate else None
    rec["max_diff"] = res.get("pyzero", {}).get("max_diff_vs_native")
    rec["exact"] = None if rec["max_diff"] is None else rec["max_diff"] <= EXACT_TOL


def cell(rec: dict, rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{1e6 / rate:,.1f} us" if rec["batch"] == 1 else f"{rate:,.0f}"


def table_row(rec: dict) -> dict[str, str]:
    res, hb = rec["results"], rec["hummingbird"]
    hb_cell = cell(rec, hb["rows_per_s"])
    return {
        "model": f"{rec['model']} {rec['trees']}x{rec['depth']}",
        "batch": f"{rec['batch']:,}",
        "pyzero": cell(rec, res["pyzero"].get("rows_per_s")),
        "native": cell(rec, res["native"].get("rows_per_s")),
        "tl2cgen": cell(rec, res.get("tl2cgen", {}).get("rows_per_s")),
        "Hummingbird": hb_cell if hb["strategy"] is None else f"{hb_cell} ({HB_STRATEGIES[hb['strategy']]})",
        "x best native": "-"
        if rec["x_best_native"] is None
        else f"{rec['x_best_native']:.2f}x ({rec['best_native']['peer']})",
        "x Hummingbird": "-" if rec["x_hummingbird"] is None else f"{rec['x_hummingbird']:.2f}x",
        "exact": "-" if rec["exact"] is None else ("yes" if rec["exact"] else "NO"),
        "max |diff|": "-" if rec["max_diff"] is None else f"{rec['max_diff']:.1e}",
    }


def skip_notes(records: list[dict]) -> list[str]:
    """One line per (model, peer, reason) that left a '-' in the table, with the batches it hit."""
    hits: dict[tuple[str, str, str], list[int]] = {}
    for r in records:
        for peer, v in r["results"].items():
            if "skipped" in v:
                hits.setdefault((f"{r['model']} {r['trees']}x{r['depth']}", peer, v["skipped"]), []).append(
                    r["batch"]
                )
    return [
        f"{model}: {peer} skipped at batch {', '.join(f'{b:,}' for b in batches)} ({why})"
        for (model, peer, why), batches in hits.items()
    ]


def plot_rate(rec: dict, line: str) -> float | None:
    if line == "hummingbird":
        return rec["hummingbird"]["rows_per_s"]
    return rec["results"].get(line, {}).get("rows_per_s")


def plot(records: list[dict], path: Path, title: str) -> None:
    """rows/s vs batch (log-log), one panel per (trees, depth) x model, one line per library."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(r["trees"], r["depth"]) for r in records})
    models = [m for m in MODEL_LIBS.values() if any(r["model"] == m for r in records)]
    fig, axes = plt.subplots(
        len(shapes), len(models), figsize=(4 * len(models), 3 * len(shapes)), squeeze=False
    )
    for i, (n_trees, depth) in enumerate(shapes):
        for j, model in enumerate(models):
            ax = axes[i][j]
            recs = [r for r in records if (r["model"], r["trees"], r["depth"]) == (model, n_trees, depth)]
            for line, label in PLOT_LINES.items():
                pts = [(r["batch"], plot_rate(r, line)) for r in recs if plot_rate(r, line)]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=label)
            ax.set(xscale="log", yscale="log", xlabel="batch (rows)", ylabel="rows/s")
            ax.set_title(f"{model} {n_trees} trees, depth {depth}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


def bench_model(
    lib: str, n_trees: int, depth: int, batches: tuple[int, ...], data: dict, args
) -> tuple[list[dict], dict]:
    """Trains one model, builds every predictor, measures it at each batch."""
    info: dict[str, Any] = {"model": MODEL_LIBS[lib], "trees": n_trees, "depth": depth}
    t0 = time.perf_counter()
    model = train(lib, n_trees, depth, args.threads, data["X_train"], data["y_train"])
    info["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cf = trees.compile(model, backend=args.backend)
    info["pyzero_compile_s"] = time.perf_counter() - t0
    info["pyzero_backend"] = cf.backend
    info["nodes"] = int(cf.forest.feature.shape[0])
    info["max_depth"] = cf.forest.max_depth
    fns: dict[str, Predictor] = {
        "pyzero": lambda X: cf.predict_proba(X)[:, 1],
        "native": native_predictor(lib, model, args.threads),
    }
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench_trees_") as workdir:
        if "tl2cgen" in args.libs:
            if info["nodes"] > args.tl2cgen_max_nodes:
                skipped["tl2cgen"] = f"{info['nodes']:,} nodes > --tl2cgen-max-nodes"
            else:
                t0 = time.perf_counter()
                try:
                    fns["tl2cgen"] = tl2cgen_predictor(lib, model, info["nodes"], args.threads, workdir)
                    info["tl2cgen_compile_s"] = time.perf_counter() - t0
                except Exception as e:  # no compiler, or a model treelite cannot import
                    skipped["tl2cgen"] = f"compile failed: {type(e).__name__}: {e}"[:160]
        if "hummingbird" in args.libs and not HAVE_HUMMINGBIRD:
            skipped["hummingbird"] = "hummingbird-ml is not installed"
        elif "hummingbird" in args.libs:
            t0 = time.perf_counter()
            hb_fns, hb_skipped, info["hummingbird_chunk_rows"] = hummingbird_predictors(
                model, n_trees, cf.forest.max_depth, args.hb_mem_gb * 1e9
            )
            info["hummingbird_convert_s"] = time.perf_counter() - t0
            fns.update(hb_fns)
            skipped.update(hb_skipped)
        records = measure(fns, skipped, data["X"], batches, args)
    for rec in records:
        rec.update({"model": MODEL_LIBS[lib], "trees": n_trees, "depth": depth})
        summarize(rec)
        row = table_row(rec)
        print("  " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "model"), flush=True)
    return records, info


def main() -> None:
    if "--device" in sys.argv:  # the GPU benchmark (bench_trees_gpu.py) takes its own arguments
        i = sys.argv.index("--device")
        device = sys.argv[i + 1] if i + 1 < len(sys.argv) else ""
        if device == "cuda":
            import bench_trees_gpu

            raise SystemExit(bench_trees_gpu.main(sys.argv[1:i] + sys.argv[i + 2 :]))
        if device != "cpu":
            raise SystemExit(f"--device must be cpu or cuda, got {device!r}")
        del sys.argv[i : i + 2]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="default", choices=["default", "small", "full"])
    ap.add_argument("--trees", type=parse_ints, default=None, help="e.g. 10,100,500")
    ap.add_argument("--depths", type=parse_ints, default=None, help="e.g. 4,8,12")
    ap.add_argument("--batches", type=parse_ints, default=None, help="e.g. 1,100,10k,1M")
    ap.add_argument("--libs", default=",".join([*MODEL_LIBS, *PEER_LIBS]), help="models and peers to run")
    ap.add_argument("--threads", type=int, default=THREADS, help="threads for every predictor")
    ap.add_argument("--train-rows", type=int, default=TRAIN_ROWS)
    ap.add_argument("--backend", default="auto", choices=list(BACKENDS))
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help="timing seconds per measurement")
    ap.add_argument("--call-cap-s", type=float, default=CALL_CAP_S, help="skip calls predicted slower")
    ap.add_argument("--hb-mem-gb", type=float, default=HB_MEM_GB, help="Hummingbird memory cap")
    ap.add_argument("--tl2cgen-max-nodes", type=int, default=TL2CGEN_MAX_NODES)
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--tag", default="cpu", help="machine tag in the output file names")
    args = ap.parse_args()
    args.libs = [s.strip() for s in args.libs.split(",")]
    unknown = set(args.libs) - {*MODEL_LIBS, *PEER_LIBS}
    if unknown or not set(args.libs) & set(MODEL_LIBS):
        ap.error(f"--libs needs one or more of {list(MODEL_LIBS)}, and peers from {list(PEER_LIBS)}")
    torch.set_num_threads(args.threads)
    grid = configs(args)
    rng = np.random.default_rng(SEED)
    X_train, y_train = higgs_like(rng, args.train_rows)
    X, _ = higgs_like(rng, max(max(b) for b in grid.values()))
    data = {"X_train": X_train, "y_train": y_train, "X": X}
    where = common.machine("cpu")
    print(f"tree inference, {FEATURES} features, {args.threads} threads; {where}", flush=True)
    records, infos = [], []
    for (n_trees, depth), batches in grid.items():
        for lib in (lib for lib in MODEL_LIBS if lib in args.libs):
            print(f"{MODEL_LIBS[lib]} {n_trees}x{depth}, batches {list(batches)}", flush=True)
            recs, info = bench_model(lib, n_trees, depth, batches, data, args)
            records += recs
            infos.append(info)
    name = "custom" if args.trees or args.depths or args.batches else args.grid
    stem = Path(args.out_dir) / f"bench_trees_{name}_{args.tag}"
    settings = {k: getattr(args, k) for k in ("threads", "train_rows", "budget_s", "call_cap_s", "hb_mem_gb")}
    common.write_json(
        f"{stem}.json",
        {"machine": where, "features": FEATURES, **settings, "models": infos, "rows": records},
    )
    plot(records, stem.with_suffix(".png"), f"tree inference, {args.threads} threads; {where}")
    print("\n".join(["", *skip_notes(records)]))
    backends = sorted({i["pyzero_backend"] for i in infos})
    print(
        f"\ntree inference, {FEATURES} features, {args.threads} threads, pyzero backend {'/'.join(backends)};"
        f" {where}\nbatch 1: us per call (median); otherwise rows/s (median); Hummingbird: best of "
        + ", ".join(s if short == s else f"{s} ({short})" for s, short in HB_STRATEGIES.items())
        + f"; exact: max |pyzero - native| <= {EXACT_TOL:g}"
    )
    common.print_table([table_row(r) for r in records], list(table_row(records[0])))


if __name__ == "__main__":
    main()
