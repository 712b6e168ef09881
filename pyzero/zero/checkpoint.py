"""Sharded checkpoints of FusedShardedAdam training: open format, atomic, resharded at load.

Note [Checkpoint format]
A checkpoint is a directory holding
- `rank{r:05d}.safetensors` per saving rank: for every flat group of the optimizer, the rank's
  partition as "{g}.master", "{g}.exp_avg", "{g}.exp_avg_sq" (fp32), or "{g}.param" (model dtype)
  for a stage-3 group of frozen parameters. Rank 0 also holds "frozen/{name}.param" (frozen
  parameters of stages 1-2, whole), "buffer/{name}" (persistent buffers) and "extra/{key}" (tensors
  passed in `extra`).
- `index.json`: format name and version, world size and stage at save, param-group hyperparameters,
  loss-scaler state, the JSON part of `extra`, each file's size and CRC-32, buffers, and for every
  parameter (under its first name in `named_parameters()`; tied names are "aliases") its shape,
  dtype, param group (null: frozen), Adam step, the kinds stored, and its pieces
  [{file, key, offset, start, end}]: elements [start, end) of the flattened parameter are elements
  [offset, offset + end - start) of tensor "{key}.{kind}" in `file`. The pieces tile [0, numel).
No pickles: a checkpoint reads without pyzero's classes. Model-dtype parameters are not stored
next to their masters: they are the masters rounded (the fused step writes them that way).

Saving is atomic: every rank writes into a temporary sibling directory and fsyncs; after all ranks
finished, rank 0 writes the index, renames the directory into place and then replaces the parent's
`latest` file (the name of the newest complete checkpoint). A crash before the rename leaves only a
temporary directory; the previous checkpoint and `latest` are untouched.
Loading checks everything (format, the model against the index, every file this rank reads: present,
complete, CRC-32) before it changes any tensor, then each rank reads only the element ranges its
own layout needs, at any world size and stage.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pyzero.zero.sharded_adam import FusedShardedAdam, _FlatGroup
from pyzero.zero.st_io import FormatError, Reader, Writer, file_crc32

FORMAT = "pyzero.checkpoint"
VERSION = 1
INDEX = "index.json"
LATEST = "latest"
TRAINABLE_KINDS = ("master", "exp_avg", "exp_avg_sq")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be saved or loaded as asked; the message names the problem."""


def rank_file(rank: int) -> str:
    return f"rank{rank:05d}.safetensors"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _names(model: nn.Module) -> tuple[dict[int, str], dict[str, str]]:
    """id(param) -> first name, and alias -> first name for tied parameters."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[n] = first[id(p)]
        else:
            first[id(p)] = n
    return first, aliases


def _buffers(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Persistent buffers, named as in state_dict()."""
    for mname, m in model.named_modules():
        for bname, b in m._buffers.items():
            if b is not None and bname not in m._non_persistent_buffers_set:
                yield (f"{mname}.{bname}" if mname else bname), b


def _flat_groups(opt: FusedShardedAdam) -> list[tuple[str, _FlatGroup]]:
    groups = [(f"g{i}", g) for i, g in enumerate(opt.groups)]
    if opt.stage3 is not None:
        groups += [(f"f{i}", g) for i, g in enumerate(opt.stage3.frozen_groups)]
    return groups


def _pieces(g: _FlatGroup, rank: int) -> list[tuple[int, int, int, int]]:
    """(param index, start, end, partition offset): the parts of g's parameters in `rank`'s partition."""
    lay = g.layout
    out = []
    for b in range(lay.num_buckets):
        s, e = lay.shard_range(b, rank)
        po = lay.partition_offset(b)
        for i, (off, n) in enumerate(zip(lay.offsets, lay.numels, strict=True)):
            lo, hi = max(s, off), min(e, off + n)
            if lo < hi:
                out.append((i, lo - off, hi - off, po + lo - s))
    return out


def _partitions(opt: FusedShardedAdam, g: _FlatGroup) -> dict[str, Tensor]:
    """This rank's partition of each kind stored for g."""
    if not g.trainable:
        return {"param": g.partition}
    if g.master is not None:
        master = g.master
    else:  # fp32: the parameters' own shards are the master
        master = g.partition if g.partition is not None else torch.cat(g.param_shards)
    return {"master": master, "exp_avg": g.exp_avg, "exp_avg_sq": g.exp_avg_sq}


def value_kind(entry: dict) -> str:
    """The stored kind holding a parameter's values: its fp32 master if it was trained, else itself."""
    return "master" if "master" in entry["kinds"] else "param"


def _json_value(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, tuple):
        return list(v)
    return v


# ------------------------------------------------------------------------------------------- save
def save_checkpoint(
    path: str | Path, model: nn.Module, opt: FusedShardedAdam, extra: dict[str, Any] | None = None
) -> Path:
    """Saves model and optimizer state as Note [Checkpoint format] says; every rank calls it.

    path: the new checkpoint directory (must not exist); the parent's `latest` names it afterwards.
    extra: JSON-serialisable values and tensors (e.g. {"step": 10, "rng": torch.get_rng_state()}),
    returned by load_checkpoint. Returns the checkpoint path.
    """
    comm = opt.comm
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"checkpoint {path} exists; save to a new directory (e.g. one per step)")
    extra = dict(extra or {})
    json_extra = {k: v for k, v in extra.items() if not isinstance(v, Tensor)}
    try:
        json.dumps(json_extra)
    except TypeError as e:
        raise TypeError(f"extra must hold JSON-serialisable values or tensors: {e}") from e
    opt.wait_for_params()
    if opt.stage3 is not None:
        opt.stage3.release_all()
    token = comm.all_gather_object(uuid.uuid4().hex if comm.rank == 0 else None)[0]
    tmp = path.parent / f".{path.name}.tmp-{token}"
    tmp.mkdir(parents=True, exist_ok=True)
    first, aliases = _names(model)
    fname = rank_file(comm.rank)
    tensors: list[tuple[str, Tensor]] = []
    pieces: dict[str, list[dict]] = {}
    steps: dict[str, float] = {}
    for gid, g in _flat_groups(opt):
        for kind, t in _partitions(opt, g).items():
            tensors.append((f"{gid}.{kind}", t))
        for i, a, b, off in _pieces(g, comm.rank):
            name = first[id(g.params[i])]
            pieces.setdefault(name, []).append(
                {"file": fname, "key": gid, "offset": off, "start": a, "end": b}
            )
        if g.trainable:
            step = float(g.steps[0])
            steps.update({first[id(p)]: step for p in g.params})
    buffers = {}
    if comm.rank == 0:
        in_groups = {id(p) for _, g in _flat_groups(opt) for p in g.params}
        for p in model.parameters():
            if id(p) not in in_groups:  # frozen parameters of stages 1-2: replicated, saved whole
                name = first[id(p)]
                tensors.append((f"frozen/{name}.param", p.detach()))
                pieces[name] = [
                    {"file": fname, "key": f"frozen/{name}", "offset": 0, "start": 0, "end": p.numel()}
                ]
        for name, b in _buffers(model):
            tensors.append((f"buffer/{name}", b))
            buffers[name] = {
                "file": fname,
                "key": f"buffer/{name}",
                "shape": list(b.shape),
                "dtype": str(b.dtype),
            }
        tensors += [(f"extra/{k}", v) for k, v in extra.items() if isinstance(v, Tensor)]
    writer = Writer(tmp / fname, [(n, t.dtype, t.shape) for n, t in tensors], {"format": FORMAT})
    for n, t in tensors:
        writer.write(n, t)
    size, digest = writer.close()
    everyone = comm.all_gather_object((fname, size, digest, pieces, steps))
    if comm.rank == 0:
        _write_index(tmp, path, model, opt, first, aliases, buffers, everyone, json_extra, extra)
        _fsync_dir(tmp)
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        pointer = path.parent / f".{LATEST}.tmp-{token}"
        pointer.write_text(path.name + "\n")
        with open(pointer, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(pointer, path.parent / LATEST)
        _fsync_dir(path.parent)
    comm.all_gather_object(None)  # nobody returns before the checkpoint is in place
    return path


def _write_index(tmp, path, model, opt, first, aliases, buffers, everyone, json_extra, extra) -> None:
    group_of = {id(p): gi for gi, grp in enumerate(opt.param_groups) for p in grp["params"]}
    pieces: dict[str, list[dict]] = {}
    steps: dict[str, float] = {}
    files = {}
    for fname, size, digest, pcs, st in everyone:
        files[fname] = {"bytes": size, "crc32": digest}
        for name, lst in pcs.items():
            pieces.setdefault(name, []).extend(lst)
        steps.update(st)
    params = {}
    for p in model.parameters():
        name = first[id(p)]
        lst = sorted(pieces[name], key=lambda d: d["start"])
        shape = list(opt.stage3.full_shape(p)) if opt.stage3 is not None else list(p.shape)
        numel = math.prod(shape)
        covered = 0
        for d in lst:
            if d["start"] != covered:
                raise CheckpointError(f"internal: pieces of {name!r} do not tile it")
            covered = d["end"]
        if covered != numel:
            raise CheckpointError(f"internal: pieces of {name!r} cover {covered} of {numel} elements")
        trainable = name in steps
        params[name] = {
            "shape": shape,
            "dtype": str(p.dtype),
            "group": group_of.get(id(p)) if trainable else None,
            "step": steps.get(name),
            "kinds": list(TRAINABLE_KINDS) if trainable else ["param"],
            "pieces": lst,
        }
    index = {
        "format": FORMAT,
        "version": VERSION,
        "world_size": opt.comm.world_size,
        "stage": opt.stage,
        "param_groups": [
            {k: _json_value(v) for k, v in grp.items() if k != "params"} for grp in opt.param_groups
        ],
        "loss_scaler": None if opt.scaler is None else opt.scaler.state_dict(),
        "extra": json_extra,
        "extra_tensors": {
            k: {"file": rank_file(0), "key": f"extra/{k}"} for k, v in extra.items() if isinstance(v, Tensor)
        },
        "files": files,
        "buffers": buffers,
        "aliases": aliases,
        "params": params,
    }
    with open(tmp / INDEX, "w") as f:
        json.dump(index, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


# -------------------------------------------------------------------------------------- reading
def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or a directory whose `latest` names one."""
    path = Path(path)
    if (path / INDEX).exists():
        return path
    if (path / LATEST).exists():
        return path / (path / LATEST).read_text().strip()
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    raise CheckpointError(f"{path} holds neither {INDEX} nor a {LATEST} pointer")


def read_index(path: str | Path) -> dict:
    path = resolve(path)
    try:
        index = json.loads((path / INDEX).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / INDEX} is unreadable: {e}") from e
    if index.get("format") != FORMAT:
        raise CheckpointError(f"{path / INDEX} is not a {FORMAT} index (format {index.get('format')!r})")
    if index.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} has format version {index['version']}, newer than this pyzero reads ({VERSION}); "
            "upgrade pyzero"
        )
    return index


class Shards:
    """The checkpoint's files, opened on demand and checked (present, complete, CRC-32) once each."""

    def __init__(self, path: Path, index: dict, verify: bool = True) -> None:
        self.path = path
        self.index = index
        self.verify = verify
        self.readers: dict[str, Reader] = {}

    def check(self, fname: str) -> Reader:
        if fname in self.readers:
            return self.readers[fname]
        info = self.index["files"].get(fname)
        if info is None:
            raise CheckpointError(f"{self.path}: the index names no file {fname!r}")
        fpath = self.path / fname
        if not fpath.exists():
            raise CheckpointError(f"{self.path}: shard file {fname} is missing")
        size = fpath.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(
                f"{self.path}: shard file {fname} is truncated or altered: {size} bytes, the index says "
                f"{info['bytes']}"
            )
        if self.verify and file_crc32(fpath) != info["crc32"]:
            raise CheckpointError(f"{self.path}: checksum mismatch in shard file {fname} (corrupted)")
        try:
            self.readers[fname] = Reader(fpath)
        except FormatError as e:
            raise CheckpointError(f"{self.path}: {e}") from e
        return self.readers[fname]

    def check_all(self, fnames: set[str]) -> None:
        """check() for several files, their checksums computed in parallel threads (zlib releases the
        GIL); the first problem in name order is raised."""
        todo = sorted(f for f in fnames if f not in self.readers)
        with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1) or 1) as pool:
            futures = [pool.submit(self.check, f) for f in todo]
        for f in futures:
            f.result()

    def read(self, name: str, kind: str, lo: int = 0, hi: int | None = None) -> Tensor:
        """Elements [lo, hi) of the flattened `kind` of parameter `name`."""
        entry = self.index["params"][name]
        hi = math.prod(entry["shape"]) if hi is None else hi
        parts = []
        for d in entry["pieces"]:
            a, b = max(lo, d["start"]), min(hi, d["end"])
            if a < b:
                reader = self.check(d["file"])
                parts.append(reader.read(f"{d['key']}.{kind}", d["offset"] + a - d["start"], b - a))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def files_for(self, name: str, lo: int = 0, hi: int | None = None) -> set[str]:
        entry = self.index["params"][name]
        hi = math.prod(entry["shape"]) if hi is None else hi
        return {d["file"] for d in entry["pieces"] if max(lo, d["start"]) < min(hi, d["end"])}

    def close(self) -> None:
        for r in self.readers.values():
            r.close()
        self.readers.clear()


# ------------------------------------------------------------------------------------------- load
def _check_model(index: dict, model: nn.Module, opt: FusedShardedAdam) -> None:
    first, _ = _names(model)
    saved = index["params"]
    mine = {}
    for p in model.parameters():
        shape = list(opt.stage3.full_shape(p)) if opt.stage3 is not None else list(p.shape)
        mine[first[id(p)]] = (shape, str(p.dtype), p.requires_grad)
    problems = []
    missing = [n for n in mine if n not in saved]
    extra = [n for n in saved if n not in mine]
    if missing:
        problems.append(f"parameters missing from the checkpoint: {missing}")
    if extra:
        problems.append(f"parameters in the checkpoint but not in the model: {extra}")
    for n, (shape, dtype, trainable) in mine.items():
        if n not in saved:
            continue
        s = saved[n]
        if s["shape"] != shape:
            problems.append(f"{n!r} has shape {shape} in the model, {s['shape']} in the checkpoint")
        if s["dtype"] != dtype:
            problems.append(f"{n!r} has dtype {dtype} in the model, {s['dtype']} in the checkpoint")
        if trainable and "master" not in s["kinds"]:
            problems.append(f"{n!r} is trainable in the model but was saved frozen (no optimizer state)")
    if len(index["param_groups"]) != len(opt.param_groups):
        problems.append(
            f"the checkpoint has {len(index['param_groups'])} param groups, the optimizer "
            f"{len(opt.param_groups)}"
        )
    if problems:
        raise CheckpointError("checkpoint does not match the model: " + "; ".join(problems))


@torch.no_grad()
def load_checkpoint(
    path: str | Path, model: nn.Module, opt: FusedShardedAdam, *, verify: bool = True
) -> dict[str, Any]:
    """Loads a checkpoint saved at any world size and stage into `model` and `opt` (every rank calls
    it). path: a checkpoint directory or a directory with a `latest` pointer. verify: check each file
    this rank reads against its CRC-32 (reads those files once in full). Returns `extra`."""
    path = resolve(path)
    index = read_index(path)
    _check_model(index, model, opt)
    shards = Shards(path, index, verify)
    try:
        reads = _plan_reads(opt, model, index)
        needed = {f for name, lo, hi in reads for f in shards.files_for(name, lo, hi)}
        needed |= {d["file"] for d in index["buffers"].values()}
        needed |= {d["file"] for d in index["extra_tensors"].values()}
        shards.check_all(needed)
        _apply(opt, model, index, shards)
        extra = dict(index["extra"])
        for k, d in index["extra_tensors"].items():
            reader = shards.check(d["file"])
            extra[k] = reader.read(d["key"]).reshape(reader.shape(d["key"]))
    finally:
        shards.close()
    opt.comm.all_gather_object(None)
    return extra


def _plan_reads(opt: FusedShardedAdam, model: nn.Module, index: dict) -> list[tuple[str, int, int]]:
    """(name, lo, hi) element ranges this rank will read."""
    first, _ = _names(model)
    reads = []
    rank = opt.comm.rank
    for _, g in _flat_groups(opt):
        for i, a, b, _ in _pieces(g, rank):
            reads.append((first[id(g.params[i])], a, b))
        if opt.stage3 is None:  # stages 1-2 hold every parameter in full
            reads += [(first[id(p)], 0, g.layout.numels[i]) for i, p in enumerate(g.params)]
    in_groups = {id(p) for _, g in _flat_groups(opt) for p in g.params}
    reads += [(first[id(p)], 0, p.numel()) for p in model.parameters() if id(p) not in in_groups]
    return reads


def _apply(opt: FusedShardedAdam, model: nn.Module, index: dict, shards: Shards) -> None:
    first, _ = _names(model)
    rank = opt.comm.rank
    opt.wait_for_params()
    if opt.stage3 is not None:
        opt.stage3.release_all()
    for _, g in _flat_groups(opt):
        if opt.stage3 is None:
            for i, p in enumerate(g.params):
                n, off = g.layout.numels[i], g.layout.offsets[i]
                g.flat_param[off : off + n].copy_(shards.read(first[id(p)], "master"))
        for i, a, b, off in _pieces(g, rank):
            name, span = first[id(g.params[i])], slice(off, off + b - a)
            if not g.trainable:
                g.partition[span].copy_(shards.read(name, value_kind(index["params"][name]), a, b))
                continue
            master = shards.read(name, "master", a, b)
            if g.master is not None:
                g.master[span].copy_(master)
            if g.partition is not None:
                g.partition[span].copy_(master)  # stage 3's parameters: the master, rounded
            g.exp_avg[span].copy_(shards.read(name, "exp_avg", a, b))
            g.exp_avg_sq[span].copy_(shards.read(name, "exp_avg_sq", a, b))
        if g.trainable:
            step = index["params"][first[id(g.params[0])]]["step"]
            for t in g.steps:
                t.fill_(step)
    in_groups = {id(p) for _, g in _flat_groups(opt) for p in g.params}
    for p in model.parameters():
        if id(p) not in in_groups:
            name = first[id(p)]
            p.data.copy_(shards.read(name, value_kind(index["params"][name])).view_as(p))
    buffers = dict(_buffers(model))
    for name, d in index["buffers"].items():
        if name in buffers:
            buffers[name].copy_(shards.check(d["file"]).read(d["key"]).view_as(buffers[name]))
    for grp, saved in zip(opt.param_groups, index["param_groups"], strict=True):
        grp.update({k: tuple(v) if k == "betas" else v for k, v in saved.items()})
    if opt.scaler is not None and index["loss_scaler"] is not None:
        opt.scaler.load_state_dict(index["loss_scaler"])


# ----------------------------------------------------------------------------------- consolidate
def consolidate_checkpoint(
    path: str | Path, out: str | Path, *, include_optimizer: bool = False, verify: bool = True
) -> Path:
    """Writes the full model (model dtype, state_dict names, tied names included, buffers) as one
    safetensors file, streaming one parameter at a time; no process group. include_optimizer adds
    "{name}.master", "{name}.exp_avg", "{name}.exp_avg_sq" (fp32) for trainable parameters."""
    path = resolve(path)
    index = read_index(path)
    shards = Shards(path, index, verify)
    out = Path(out)
    specs = []
    plan = []  # (output name, param or buffer name, kind or None, dtype)
    for name, e in index["params"].items():
        dtype = _dtype(e["dtype"])
        specs.append((name, dtype, e["shape"]))
        plan.append((name, name, value_kind(e), dtype))
    for alias, name in index["aliases"].items():
        e = index["params"][name]
        specs.append((alias, _dtype(e["dtype"]), e["shape"]))
        plan.append((alias, name, value_kind(e), _dtype(e["dtype"])))
    for name, d in index["buffers"].items():
        specs.append((name, _dtype(d["dtype"]), d["shape"]))
        plan.append((name, name, None, _dtype(d["dtype"])))
    if include_optimizer:
        for name, e in index["params"].items():
            for kind in TRAINABLE_KINDS if "master" in e["kinds"] else ():
                specs.append((f"{name}.{kind}", torch.float32, e["shape"]))
                plan.append((f"{name}.{kind}", name, kind, torch.float32))
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex}")
    try:
        shards.check_all(set(index["files"]))
        writer = Writer(tmp, specs, {"format": "pt"})
        for oname, name, kind, dtype in plan:
            if kind is None:
                d = index["buffers"][name]
                t = shards.check(d["file"]).read(d["key"])
            else:
                t = shards.read(name, kind)
            writer.write(oname, t.to(dtype))
            del t
        writer.close()
        os.replace(tmp, out)
    finally:
        shards.close()
        if tmp.exists():
            tmp.unlink()
    return out


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"unknown dtype {name!r} in the index")
    return dtype


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Summary of a checkpoint: where, format, world size and stage, sizes, parameters."""
    path = resolve(path)
    index = read_index(path)
    numel = sum(math.prod(e["shape"]) for e in index["params"].values())
    return {
        "path": str(path),
        "format": f"{index['format']}/{index['version']}",
        "world_size": index["world_size"],
        "stage": index["stage"],
        "parameters": len(index["params"]),
        "elements": numel,
        "files": len(index["files"]),
        "bytes": sum(f["bytes"] for f in index["files"].values()),
        "steps": sorted({e["step"] for e in index["params"].values() if e["step"] is not None}),
        "extra": index["extra"],
    }
