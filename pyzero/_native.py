"""Loads the compiled extension ``pyzero._C`` and registers fake kernels for its ops.

Importing ``torch`` first makes ``libc10.so`` resolvable for the extension. The extension is built
by ``pip install`` (never at import); when it is missing, ``C`` is None and ``require()`` explains.
"""

from __future__ import annotations

import torch

try:
    from pyzero import _C as C

    IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # the pure-torch parts (reference backend) still work
    C = None
    IMPORT_ERROR = exc


def require(what: str):
    """Returns the extension module or raises a RuntimeError naming what needed it."""
    if C is None:
        raise RuntimeError(
            f"{what} needs the compiled extension pyzero._C, which failed to import "
            f"({IMPORT_ERROR}); reinstall with `pip install --no-build-isolation .`"
        )
    return C


def cuda_built() -> bool:
    """True when pyzero._C was built with its CUDA kernels."""
    return C is not None and bool(C.with_cuda)


if C is not None:

    @torch.library.register_fake("pyzero::fused_adamw_")
    def _fused_adamw_fake(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        params_out,
        state_steps,
        *,
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        adamw_mode,
        maximize,
        grad_scale=None,
        found_inf=None,
    ) -> None:
        return None

    @torch.library.register_fake("pyzero::tree_predict_raw")
    def _tree_predict_raw_fake(
        nodes, values, roots, depths, threshold64, cat_bits, cat_domain, x, base, float32_accum
    ):
        return x.new_empty((x.shape[0], values.shape[1]), dtype=torch.float64)

    @torch.library.register_fake("pyzero::tree_predict_leaves")
    def _tree_predict_leaves_fake(nodes, values, roots, depths, threshold64, cat_bits, cat_domain, x):
        return x.new_empty((x.shape[0], roots.shape[0]), dtype=torch.int32)

    @torch.library.register_fake("pyzero::tree_perfect_raw")
    def _tree_perfect_raw_fake(
        meta, threshold, values, values32, leaf_nodes, column_kind, x, base, float32_accum
    ):
        return x.new_empty((x.shape[0], values.shape[2]), dtype=torch.float64)

    @torch.library.register_fake("pyzero::tree_walk")
    def _tree_walk_fake(
        format, nodes, roots, leaf_nodes, values, threshold64, cat_bits, cat_domain, column_kind,
        depth, n_features, copies, x, base, float32_accum, leaves, config, finish,
    ):  # fmt: skip
        if leaves:
            trees = nodes.shape[0] if format in (0, 3) else roots.shape[0]
            if format == 4:  # tiled: trees * 2^depth leaf slots
                trees = leaf_nodes.shape[0] >> depth
            return x.new_empty((x.shape[0], trees), dtype=torch.int32)
        pair = len(finish) == 4 and finish[3] != 0
        return x.new_empty((x.shape[0], 2 if pair else values.shape[1]), dtype=torch.float64)

    torch.library.register_fake("pyzero::tree_walk_emulated")(_tree_walk_fake)

    @torch.library.register_fake("pyzero::tree_perfect_leaves")
    def _tree_perfect_leaves_fake(meta, threshold, leaf_nodes, column_kind, x):
        return x.new_empty((x.shape[0], meta.shape[0]), dtype=torch.int32)

    @torch.library.register_fake("pyzero::tree_qs_raw")
    def _tree_qs_raw_fake(
        threshold, word, mask, start, nan_word, nan_mask, nan_start, word_start, cat_feature,
        cat_row_start, cat_word, cat_mask, cat_domain, values, values32, leaf_nodes, column_kind, x, base,
        float32_accum,
    ):  # fmt: skip
        return x.new_empty((x.shape[0], values.shape[2]), dtype=torch.float64)

    @torch.library.register_fake("pyzero::tree_qs_leaves")
    def _tree_qs_leaves_fake(
        threshold, word, mask, start, nan_word, nan_mask, nan_start, word_start, cat_feature,
        cat_row_start, cat_word, cat_mask, cat_domain, leaf_nodes, column_kind, x,
    ):  # fmt: skip
        return x.new_empty((x.shape[0], word_start.shape[0] - 1), dtype=torch.int32)
