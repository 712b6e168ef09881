"""pyzero checkpoints: resharding round trips on gloo ranks, consolidation, atomicity, corruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import pyzero
from pyzero.cli import main as cli
from pyzero.zero.checkpoint import INDEX, LATEST, CheckpointError, rank_file
from tests.zero import checkpoint_jobs
from tests.zero.dist_utils import run_ranks
from tests.zero.jobs import LR, TINY_BUCKET_MB, make_optimizer
from tests.zero.models import batches, loss_fn, make_model

ROOT = Path(__file__).resolve().parents[2]
# Continuing at another world size or stage sums gradients in another order.
RESHARD_RTOL = 1e-6


def _rel(a: list[float], b: list[float]) -> float:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return ((ta - tb).norm() / tb.norm()).item()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint saved at world size 2, stage 2, and what the uninterrupted run did."""
    path = tmp_path_factory.mktemp("ckpt") / "w2s2"
    results = run_ranks(2, checkpoint_jobs.save_job, str(path), 2)
    return path, results[0]


@pytest.mark.parametrize(("world", "stage"), [(2, 2), (1, 2), (3, 2), (2, 3), (4, 1)])
def test_load_at_any_world_size_and_stage_continues_like_the_uninterrupted_run(saved, world, stage):
    path, ref = saved
    results = run_ranks(world, checkpoint_jobs.load_job, str(path), stage)
    for r in results:
        assert r["extra"] == {"step": checkpoint_jobs.SAVE_AT - 1, "note": "x", "t": [0, 1, 2]}
        assert r["lr"] == LR
        if (world, stage) == (2, 2):
            assert r["final"] == ref["final"]  # bitwise at the same world size and stage
        else:
            assert _rel(r["final"], ref["final"]) <= RESHARD_RTOL, (world, stage)


@pytest.mark.parametrize(
    ("save_world", "save_stage", "load_world", "load_stage"), [(3, 3, 2, 1), (4, 2, 2, 3)]
)
def test_other_saves_reshard_too(tmp_path, save_world, save_stage, load_world, load_stage):
    path = tmp_path / "ckpt"
    ref = run_ranks(save_world, checkpoint_jobs.save_job, str(path), save_stage)[0]
    got = run_ranks(load_world, checkpoint_jobs.load_job, str(path), load_stage)[0]
    assert _rel(got["final"], ref["final"]) <= RESHARD_RTOL
    index = json.loads((path / INDEX).read_text())
    assert (index["world_size"], index["stage"]) == (save_world, save_stage)
    assert len(index["files"]) == save_world


def test_consolidated_file_equals_the_full_state_dict(saved, tmp_path):
    path, ref = saved
    out = pyzero.consolidate_checkpoint(path, tmp_path / "model.safetensors")
    got = load_file(out)  # the safetensors library reads it
    assert sorted(got) == sorted(ref["at_save"])
    for k, v in ref["at_save"].items():
        assert torch.equal(got[k].float(), torch.tensor(v)), k
    full = pyzero.consolidate_checkpoint(path, tmp_path / "all.safetensors", include_optimizer=True)
    with safe_open(full, "pt") as f:
        assert "block.0.weight.exp_avg_sq" in f.keys() and "frozen.weight.master" not in f.keys()


def test_rank_files_are_plain_safetensors(saved):
    path, _ = saved
    index = json.loads((path / INDEX).read_text())
    piece = index["params"]["block.0.weight"]["pieces"][0]
    with safe_open(path / piece["file"], "pt") as f:
        assert f.get_tensor(f"{piece['key']}.exp_avg").dtype == torch.float32
    assert (path.parent / LATEST).read_text().strip() == path.name


def test_cli_info_and_consolidate(saved, tmp_path, capsys):
    path, ref = saved
    assert cli(["checkpoint", "info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "world size 2, stage 2" in text and "pyzero.checkpoint/1" in text
    assert cli(["checkpoint", "consolidate", str(path), str(tmp_path / "m.safetensors")]) == 0
    assert torch.equal(
        load_file(tmp_path / "m.safetensors")["norm.weight"], torch.tensor(ref["at_save"]["norm.weight"])
    )


# ----------------------------------------------------------------------- one process, no group
def _local_checkpoint(
    tmp_path: Path, name: str = "ckpt", stage: int = 2
) -> tuple[Path, torch.nn.Module, object]:
    model = make_model()
    opt = make_optimizer(model, {"stage": stage}, lr=LR, bucket_cap_mb=TINY_BUCKET_MB)
    for tokens in (b[0] for b in batches(2, 1)):
        loss_fn(model, tokens).backward()
        opt.step()
    return pyzero.save_checkpoint(tmp_path / name, model, opt, extra={"step": 1}), model, opt


def _snapshot(model, opt) -> list[torch.Tensor]:
    return [t.clone() for g in opt.groups for t in (g.flat_param, g.exp_avg, g.exp_avg_sq)] + [
        p.detach().clone() for p in model.parameters()
    ]


def _fresh():
    model = make_model(seed=3)
    return model, make_optimizer(model, {"stage": 2}, lr=LR, bucket_cap_mb=TINY_BUCKET_MB)


def _corrupt_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: (p / rank_file(0)).unlink(), r"shard file rank00000\.safetensors is missing"),
        (lambda p: _corrupt_byte(p / rank_file(0)), r"checksum mismatch in shard file rank00000"),
        (lambda p: os.truncate(p / rank_file(0), 100), r"rank00000\.safetensors is truncated"),
        (
            lambda p: (p / INDEX).write_text(
                json.dumps(json.loads((p / INDEX).read_text()) | {"version": 9})
            ),
            r"format version 9, newer than this pyzero reads \(1\)",
        ),
        (lambda p: (p / INDEX).write_text("{"), r"index\.json is unreadable"),
    ],
)
def test_damaged_checkpoint_raises_and_changes_nothing(tmp_path, damage, match):
    path, _, _ = _local_checkpoint(tmp_path)
    damage(path)
    model, opt = _fresh()
    before = _snapshot(model, opt)
    with pytest.raises(CheckpointError, match=match):
        pyzero.load_checkpoint(path, model, opt)
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(model, opt), strict=True))


def test_model_that_does_not_match_the_index_raises_with_names(tmp_path):
    path, _, _ = _local_checkpoint(tmp_path)
    model = make_model(seed=3)
    model.extra = torch.nn.Linear(3, 2)
    model.norm = torch.nn.LayerNorm(5)
    model.frozen = torch.nn.Identity()
    opt = make_optimizer(model, {"stage": 2}, lr=LR)
    before = _snapshot(model, opt)
    with pytest.raises(CheckpointError) as e:
        pyzero.load_checkpoint(path, model, opt)
    msg = str(e.value)
    assert "missing from the checkpoint: ['extra.weight', 'extra.bias']" in msg
    assert "in the checkpoint but not in the model: ['frozen.weight']" in msg
    assert "'norm.weight' has shape [5] in the model, [24] in the checkpoint" in msg
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(model, opt), strict=True))
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        pyzero.load_checkpoint(tmp_path / "nowhere", model, opt)


@pytest.mark.parametrize(("dtype", "stages"), [(torch.float16, (3, 2)), (torch.bfloat16, (2, 3))])
def test_low_precision_and_loss_scaler_round_trip(tmp_path, dtype, stages):
    data = [b[0] for b in batches(4, 1)]
    runs = []
    for stage in stages:
        torch.manual_seed(0)
        model = make_model(dtype=dtype)
        opt = pyzero.FusedShardedAdam(model, stage=stage, lr=LR, loss_scale="dynamic")
        runs.append((model, opt))
    model, opt = runs[0]
    for tokens in data[:2]:
        opt.backward(loss_fn(model, tokens))
        opt.step()
    opt.scaler.scale = 1024.0  # something the fresh optimizer does not have
    pyzero.save_checkpoint(tmp_path / "lp", model, opt)
    twin, twin_opt = runs[1]
    pyzero.load_checkpoint(tmp_path, twin, twin_opt)
    assert twin_opt.loss_scale == 1024.0
    for m, o in runs:
        for tokens in data[2:]:
            o.backward(loss_fn(m, tokens))
            o.step()
    a, b = (pyzero.full_state_dict(m) if o.stage == 3 else m.state_dict() for m, o in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)  # one rank: the same sums, so bitwise


def test_parameter_trained_at_save_loads_into_a_frozen_one(tmp_path):
    path, trained, _ = _local_checkpoint(tmp_path)
    model = make_model(seed=3)
    model.norm.weight.requires_grad_(False)
    opt = make_optimizer(model, {"stage": 2}, lr=LR)
    pyzero.load_checkpoint(path, model, opt)
    assert torch.equal(model.norm.weight, trained.norm.weight)


def test_save_refuses_to_overwrite_and_latest_names_the_newest(tmp_path):
    path, model, opt = _local_checkpoint(tmp_path, "a")
    pyzero.save_checkpoint(tmp_path / "b", model, opt)
    assert (tmp_path / LATEST).read_text().strip() == "b"
    with pytest.raises(FileExistsError, match="exists; save to a new directory"):
        pyzero.save_checkpoint(path, model, opt)
    with pytest.raises(TypeError, match="extra must hold JSON-serialisable values or tensors"):
        pyzero.save_checkpoint(tmp_path / "c", model, opt, extra={"f": object()})


KILLED_SAVE = """
import os, signal, sys
sys.path.insert(0, {root!r})
import pyzero
import pyzero.zero.checkpoint as ck
from tests.zero.test_checkpoint import _local_checkpoint
from pathlib import Path
path, model, opt = _local_checkpoint(Path({tmp!r}), "first")
def killed(*args):  # between writing every shard and renaming the directory into place
    os.kill(os.getpid(), signal.SIGKILL)
ck.os.rename = killed
pyzero.save_checkpoint(Path({tmp!r}) / "second", model, opt)
"""


def test_kill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    script = KILLED_SAVE.format(root=str(ROOT), tmp=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (tmp_path / "second").exists()
    assert any(p.name.startswith(".second.tmp-") for p in tmp_path.iterdir())  # the abandoned attempt
    assert (tmp_path / LATEST).read_text().strip() == "first"
    model, opt = _fresh()
    assert pyzero.load_checkpoint(tmp_path, model, opt) == {"step": 1}


CONSOLIDATE_PEAK = """
import sys
sys.path.insert(0, {root!r})
import pyzero

def rss_peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

pyzero.zero.checkpoint.read_index({path!r})
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS
before = rss_kib()
pyzero.consolidate_checkpoint({path!r}, {out!r}, include_optimizer=True)
print(rss_peak_kib() - before)
"""
WIDE = 1024  # Linear(WIDE, WIDE) layers of 4 MiB weights
LAYERS = 8
PEAK_SLACK_BYTES = 8 * 2**20  # allocator and interpreter noise on top of the bound


def test_consolidation_streams_parameter_by_parameter(tmp_path):
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDE, WIDE) for _ in range(LAYERS)])
    opt = pyzero.FusedShardedAdam(model, stage=2, lr=LR)
    model(torch.randn(2, WIDE)).sum().backward()
    opt.step()
    path = pyzero.save_checkpoint(tmp_path / "big", model, opt)
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    total = sum(p.numel() * p.element_size() for p in model.parameters()) * 4  # params + 3 optimizer kinds
    script = CONSOLIDATE_PEAK.format(root=str(ROOT), path=str(path), out=str(tmp_path / "out.safetensors"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grew = int(proc.stdout.split()[-1]) * 1024
    print(f"consolidation of {total / 2**20:.0f} MiB: peak RSS grew {grew / 2**20:.1f} MiB")
    assert grew <= 2 * largest + PEAK_SLACK_BYTES < total / 4
    got = load_file(tmp_path / "out.safetensors")
    assert torch.equal(got["3.weight"], model[3].weight.detach())
    g = opt.groups[0]  # one rank: its partition is the whole flat buffer
    i = next(i for i, p in enumerate(g.params) if p is model[3].weight)
    off, n = g.layout.offsets[i], g.layout.numels[i]
    assert torch.equal(got["3.weight.exp_avg"].reshape(-1), g.exp_avg[off : off + n])


def test_train_gpt_resumes_after_a_killed_rank(tmp_path):
    args = ["--steps", "40", "--dim", "64", "--layers", "2", "--micro-batch", "4", "--device", "cpu"]
    script = str(ROOT / "examples" / "train_gpt.py")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    plain = subprocess.run([*torchrun, script, *args], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [
            *torchrun,
            "--max-restarts=1",
            script,
            *args,
            "--save-every",
            "5",
            "--resume",
            "--ckpt-dir",
            str(ckpt),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        killed = _kill_rank_after_first_checkpoint(proc.pid, ckpt / LATEST)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed, "the run finished before a rank could be killed"
    assert proc.returncode == 0, err[-3000:]
    assert "resumed from" in out, out
    final = [line for line in out.splitlines() if line.startswith("loss ")]
    expected = [line for line in plain.stdout.splitlines() if line.startswith("loss ")]
    assert final[0].split(" in ")[0] == expected[0].split(" in ")[0]  # same first and final loss
    assert "-> MATCH" in out


def _kill_rank_after_first_checkpoint(root_pid: int, latest: Path, timeout_s: float = 120) -> bool:
    """SIGKILLs the worker with LOCAL_RANK=1 once `latest` exists; False if the job ended first."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(root_pid):
            return False
        if latest.exists():
            for pid in _descendants(root_pid):
                try:
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"LOCAL_RANK=1" in env:
                    os.kill(pid, signal.SIGKILL)
                    return True
        time.sleep(0.01)
    return False


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out
