"""The main job, examples/train_gpt.py, under torchrun: one node with 2 ranks, and 2 "nodes" on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.zero.dist_utils import free_port

SCRIPT = str(Path(__file__).resolve().parents[2] / "examples" / "train_gpt.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
RUN_TIMEOUT_S = 240
ARGS = ["--steps", "6", "--dim", "64", "--layers", "2", "--micro-batch", "4", "--device", "cpu"]


@pytest.mark.parametrize("stage_args", [["1"], ["3", "--zero-init"]])
def test_standalone_two_ranks_matches_unsharded_run(stage_args):
    out = subprocess.run(
        [*TORCHRUN, "--standalone", "--nproc_per_node=2", SCRIPT, "--zero-stage", *stage_args, *ARGS],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 rank(s)" in out.stdout and "-> MATCH" in out.stdout, out.stdout


def test_two_nodes_through_rendezvous_on_localhost():
    port = free_port()
    common = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}"]
    procs = [
        subprocess.Popen(
            [
                *TORCHRUN,
                *common,
                f"--node_rank={n}",
                # Both "nodes" are this host: name the one that hosts the rendezvous store, instead of
                # letting both race to bind it.
                f"--rdzv-conf=is_host={int(n == 0)}",
                "--rdzv-id=pyzero-test",
                SCRIPT,
                "--zero-stage",
                "2",
                *ARGS,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (0, 1)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=RUN_TIMEOUT_S))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [e[-3000:] for _, e in outs]
    stdout = "".join(o for o, _ in outs)
    assert "2 rank(s)" in stdout and "-> MATCH" in stdout, stdout
