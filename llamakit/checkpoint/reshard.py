"""Rewrite a Meta checkpoint for another model-parallel size (8 shards -> 2 GPUs), one tensor at a time."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import struct
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from llamakit.checkpoint.checklist import write_checklist
from llamakit.checkpoint.layout import split_dim
from llamakit.checkpoint.layout import DTYPES as ALL_DTYPES
from llamakit.checkpoint.shards import Checkpoint, load_shard, open_checkpoint
from llamakit.errors import LlamakitError

DTYPES: dict[str, torch.dtype] = {k: ALL_DTYPES[k] for k in ("bf16", "fp16")}  # conversions offered
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# Meta stores rope.freqs in fp32 and its model recomputes the frequencies: it is copied, never converted.
KEEP_DTYPE = {"rope.freqs"}
PARTIAL = ".partial-"  # DST.partial-<pid>: where a reshard writes before the final rename

Progress = Callable[[str, int, int], None]  # (phase "write" | "checksum", bytes done, bytes total)


@dataclass
class ReshardResult:
    """What a reshard wrote and how: the CLI prints it, tests check it."""

    src: Path
    dst: Path
    mp_in: int
    mp_out: int
    dtype: str  # dtype of the weights written ("bf16", "fp16", ...)
    shard_bytes: int  # bytes of tensors in one output shard
    streaming: bool  # True: one tensor in RAM at a time; False: one output shard (torch without skip_data)
    peak_ram_bytes: int  # the estimate this run stays under (without the Python/torch runtime)
    tokenizer: str  # what happened to tokenizer.model, as a sentence
    cleaned: list[Path] = field(default_factory=list)  # leftover partial folders of killed runs, removed
    seconds: float = 0.0


# ---------------------------------------------------------------- sizes and checks


def out_shape(ckpt: Checkpoint, key: str, mp: int) -> tuple[int, ...]:
    """Shape of `key` in one shard of the output at model-parallel size `mp`."""
    shape = list(ckpt.full_shape(key))
    dim = split_dim(key, ckpt.vocab_parallel)
    if dim is not None:
        shape[dim] //= mp
    return tuple(shape)


def out_dtype(ckpt: Checkpoint, key: str, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype `key` is written in: the requested one, except for keys kept as they are (rope.freqs)."""
    src = ckpt.dtypes[0][key]
    return src if dtype is None or key in KEEP_DTYPE else dtype


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def shard_bytes(ckpt: Checkpoint, mp: int, dtype: torch.dtype | None = None) -> int:
    """Bytes of tensor data in one output shard."""
    return sum(_numel(out_shape(ckpt, k, mp)) * out_dtype(ckpt, k, dtype).itemsize for k in ckpt.shapes[0])


def peak_ram_bytes(ckpt: Checkpoint, mp: int, dtype: torch.dtype | None = None, streaming: bool = True) -> int:
    """RAM a reshard needs beyond the Python/torch runtime: the reused output buffer (largest output tensor) plus
    the pages of one input tensor while it is copied; without streaming the whole output shard is held as well."""
    biggest_out = max(_numel(out_shape(ckpt, k, mp)) * out_dtype(ckpt, k, dtype).itemsize for k in ckpt.shapes[0])
    biggest_in = max(_numel(s) * ckpt.dtypes[0][k].itemsize for k, s in ckpt.shapes[0].items())
    return biggest_out + biggest_in + (0 if streaming else shard_bytes(ckpt, mp, dtype))


def allowed_mp(ckpt: Checkpoint) -> list[int]:
    """MP sizes that split every sharded tensor evenly and keep whole (kv) heads per shard."""
    from_config = ckpt.config.allowed_mp(ckpt.vocab_rows)
    ok = []
    dims = {k: split_dim(k, ckpt.vocab_parallel) for k in ckpt.shapes[0]}
    for mp in from_config:
        if all(d is None or ckpt.full_shape(k)[d] % mp == 0 for k, d in dims.items()):
            ok.append(mp)
    return ok


def check_mp(ckpt: Checkpoint, mp: int) -> None:
    """A LlamakitError naming the allowed sizes if `mp` does not divide this model's shapes."""
    allowed = allowed_mp(ckpt)
    if mp in allowed:
        return
    c = ckpt.config
    shapes = (f"dim {c.dim}, {c.n_heads} heads, {c.kv_heads} kv heads, ffn {c.ffn_hidden}, "
              f"vocab {ckpt.vocab_rows}")
    raise LlamakitError(f"--mp {mp} does not divide this model's shapes ({shapes})",
                        f"use one of: {', '.join(map(str, allowed))}", ckpt.path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_partials(dst: Path) -> list[Path]:
    """Remove `DST.partial-<pid>` folders left by killed reshards; one whose process still runs is an error."""
    cleaned = []
    if not dst.parent.is_dir():
        return cleaned
    for p in sorted(dst.parent.glob(f"{dst.name}{PARTIAL}*")):
        m = re.fullmatch(re.escape(dst.name + PARTIAL) + r"(\d+)", p.name)
        if not m or not p.is_dir():
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            raise LlamakitError(f"another reshard (pid {pid}) is writing {p.name}",
                                f"wait for it to finish, or stop it (kill {pid}) and run again", p)
        shutil.rmtree(p)
        cleaned.append(p)
    return cleaned


def _check_paths(src: Path, dst: Path) -> None:
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents or d in s.parents:
        raise LlamakitError("DST must be a new folder outside SRC",
                            f"pass a folder beside it, e.g. {s.parent / (s.name + '-resharded')}", dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise LlamakitError("DST already exists and is not empty; reshard never overwrites",
                            "choose a new folder, or delete this one first", dst.resolve())


def _check_disk(dst: Path, need: int) -> None:
    probe = dst.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise LlamakitError(f"not enough disk: the new checkpoint needs {need / 1024**3:.1f} GiB, "
                            f"{free / 1024**3:.1f} GiB free", "free space or write DST on another disk", probe)


# ---------------------------------------------------------------- reading


def overlaps(ckpt: Checkpoint, key: str, mp: int, index: int) -> list[tuple[int, int, int]]:
    """(input shard, start, length) along the split dim that make up `key` in output shard `index` of `mp`."""
    dim = split_dim(key, ckpt.vocab_parallel)
    if dim is None:
        return [(0, 0, 0)]  # replicated: shard 0's full copy
    size_in = ckpt.shapes[0][key][dim]
    size_out = size_in * ckpt.mp // mp
    lo, hi = index * size_out, (index + 1) * size_out
    return [(i, max(lo, i * size_in) - i * size_in, min(hi, (i + 1) * size_in) - max(lo, i * size_in))
            for i in range(lo // size_in, (hi - 1) // size_in + 1)]


def tensors_for_shard(ckpt: Checkpoint, mp: int, index: int,
                      dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) of output shard `index`. The overlapping input shards are memory-mapped once; each key's
    slices are copied (converted on the way) into one reused buffer, then the input pages read for it are handed
    back to the kernel: RAM stays at about one tensor whatever the shard size. A yielded tensor is valid until the
    next one is asked for."""
    keys = list(ckpt.shapes[0])
    biggest = max(_numel(out_shape(ckpt, k, mp)) * out_dtype(ckpt, k, dtype).itemsize for k in keys)
    buffer = torch.empty(biggest, dtype=torch.uint8)
    maps: dict[int, dict[str, torch.Tensor]] = {}
    for key in keys:
        shape, dt = out_shape(ckpt, key, mp), out_dtype(ckpt, key, dtype)
        out = buffer[: _numel(shape) * dt.itemsize].view(dt).view(shape)
        dim = split_dim(key, ckpt.vocab_parallel)
        at = 0
        for i, start, length in overlaps(ckpt, key, mp, index):
            if i not in maps:
                maps[i] = load_shard(ckpt.shards[i])
            part = maps[i][key]
            if dim is None:
                out.copy_(part)
            else:
                out.narrow(dim, at, length).copy_(part.narrow(dim, start, length))
                at += length
            _drop_pages(part)
        yield key, out
        del out


def _drop_pages(t: torch.Tensor) -> None:
    """Unmap the pages of an mmap'd input tensor that we have read (Linux madvise DONTNEED): they are clean pages
    of a private file mapping, so the kernel re-reads them from the file if they are ever touched again.
    Without this, every page read stays in this process's RSS until the shard is closed."""
    if _MADVISE is None or t.numel() == 0:
        return
    page = _PAGE
    lo = t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size()
    hi = lo + t.numel() * t.element_size()
    lo_page, hi_page = lo // page * page, -(-hi // page) * page
    _MADVISE(ctypes.c_void_p(lo_page), ctypes.c_size_t(hi_page - lo_page), 4)  # MADV_DONTNEED


def _libc_madvise() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _libc_madvise()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# ---------------------------------------------------------------- writing


class _WholeShardWriter:
    """Collects the shard in RAM and calls torch.save (for torch versions without serialization.skip_data)."""

    def __init__(self, path: Path, specs: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        self.path, self.sd = path, {}

    def write(self, key: str, tensor: torch.Tensor) -> None:
        self.sd[key] = tensor.clone()  # a clone: never keep an input shard mapped

    def abort(self) -> None:
        self.sd = {}

    def close(self) -> None:
        torch.save(self.sd, self.path)
        self.sd = {}
        _fsync(self.path)


class _StreamingShardWriter:
    """Writes a file that torch.load reads exactly like torch.save's, holding one tensor at a time: torch saves a
    skeleton with empty space for each tensor (serialization.skip_data), then each tensor's bytes go into its slot
    and its zip CRC is filled in; at the end the file is reopened and every tensor's first and last bytes checked."""

    def __init__(self, path: Path, specs: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        self.path, self.specs = path, specs
        skeleton = {k: torch.empty(shape, dtype=dt) for k, (shape, dt) in specs.items()}  # untouched: no RAM
        with torch.serialization.skip_data():
            torch.save(skeleton, path)
        del skeleton
        self.slots = _data_slots(path)
        sizes = [_numel(s) * dt.itemsize for s, dt in specs.values()]
        if [size for _, size, _, _ in self.slots] != sizes:
            raise RuntimeError(f"{path}: unexpected layout of torch.save's skeleton (torch {torch.__version__})")
        self.keys = list(specs)
        self.fingerprints: dict[str, tuple[bytes, bytes]] = {}
        self.fd = os.open(path, os.O_RDWR)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        i = len(self.fingerprints)
        if self.keys[i] != key or tuple(tensor.shape) != self.specs[key][0] or tensor.dtype != self.specs[key][1]:
            raise RuntimeError(f"{key}: written out of order or with the wrong shape/dtype")
        data = memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
        offset, size, desc, central = self.slots[i]
        done = 0
        while done < size:
            done += os.pwrite(self.fd, data[done:done + (1 << 28)], offset + done)
        crc = struct.pack("<I", zlib.crc32(data))
        os.pwrite(self.fd, crc, desc + 4)  # data descriptor: PK\x07\x08 crc sizes
        os.pwrite(self.fd, crc, central + 16)  # central directory entry
        self.fingerprints[key] = (bytes(data[:16]), bytes(data[-16:]))

    def abort(self) -> None:
        os.close(self.fd)

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        if len(self.fingerprints) != len(self.keys):
            raise RuntimeError(f"{self.path}: {len(self.keys) - len(self.fingerprints)} tensors never written")
        sd = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        for key, (head, tail) in self.fingerprints.items():
            b = sd[key].reshape(-1).view(torch.uint8)
            if bytes(b[:16].numpy()) != head or bytes(b[-16:].numpy()) != tail:
                raise RuntimeError(f"{self.path}: {key} reads back different bytes than were written")


def _data_slots(path: Path) -> list[tuple[int, int, int, int]]:
    """(data offset, size, data-descriptor offset, central-directory-entry offset) of each archive/data/N record."""
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        infos = z.infolist()
        central: dict[str, int] = {}
        pos = z.start_dir
        for _ in infos:
            f.seek(pos)
            h = f.read(46)
            if h[:4] != b"PK\x01\x02":
                raise RuntimeError(f"{path}: unexpected zip central directory")
            n, e, c = struct.unpack("<HHH", h[28:34])
            central[f.read(n).decode("utf-8")] = pos
            pos += 46 + n + e + c
        data = sorted(((int(m.group(1)), i) for i in infos if (m := re.search(r"/data/(\d+)$", i.filename))))
        slots = []
        for _, info in data:
            f.seek(info.header_offset)
            h = f.read(30)
            if h[:4] != b"PK\x03\x04" or not h[6] & 8:
                raise RuntimeError(f"{path}: unexpected zip record header")
            n, e = struct.unpack("<HH", h[26:30])
            offset = info.header_offset + 30 + n + e
            f.seek(offset + info.file_size)
            if f.read(4) != b"PK\x07\x08":
                raise RuntimeError(f"{path}: zip record without data descriptor")
            slots.append((offset, info.file_size, offset + info.file_size, central[info.filename]))
    return slots


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place_tokenizer(src: Path, out: Path, explicit: Path | None) -> str:
    """Hardlink (or copy) tokenizer.model into the new folder, so it works wherever it is moved."""
    from llamakit.tokenizer import find_tokenizer

    try:
        tok = find_tokenizer(src, explicit)
    except LlamakitError:
        return "no tokenizer.model found beside SRC or in its parent: pass --tokenizer when running it"
    if not tok.is_file():
        raise LlamakitError("tokenizer file does not exist", "check the --tokenizer path", tok)
    try:
        os.link(tok, out / "tokenizer.model")
        how = "hardlinked"
    except OSError:
        shutil.copyfile(tok, out / "tokenizer.model")
        how = "copied"
    return f"tokenizer.model {how} from {tok}"


# ---------------------------------------------------------------- the command


def reshard(src: str | Path, dst: str | Path, mp: int, dtype: str | None = None, tokenizer: str | Path | None = None,
            progress: Progress | None = None, streaming: bool | None = None) -> ReshardResult:
    """Write SRC's weights to the new folder DST as `mp` shards (optionally as bf16/fp16), with params.json,
    tokenizer.model and a fresh checklist.chk. Work happens in DST.partial-<pid>, renamed to DST only when complete."""
    started = time.monotonic()
    ckpt = open_checkpoint(src)
    check_mp(ckpt, mp)
    if dtype not in (None, "keep") and dtype not in DTYPES:
        raise LlamakitError(f"unknown --dtype {dtype!r}", f"use keep, {', '.join(DTYPES)}")
    target = DTYPES.get(dtype or "keep")
    dst = Path(dst)
    _check_paths(ckpt.path, dst)
    cleaned = clean_partials(dst)
    if streaming is None:
        streaming = hasattr(torch.serialization, "skip_data")
    per_shard = shard_bytes(ckpt, mp, target)
    _check_disk(dst, mp * per_shard + (64 << 20))
    report = progress or (lambda phase, done, total: None)

    partial = dst.parent / f"{dst.name}{PARTIAL}{os.getpid()}"
    partial.mkdir(parents=True)
    try:
        done, total = 0, mp * per_shard
        report("write", 0, total)
        for j in range(mp):
            specs = {k: (out_shape(ckpt, k, mp), out_dtype(ckpt, k, target)) for k in ckpt.shapes[0]}
            path = partial / f"consolidated.{j:02d}.pth"
            writer = (_StreamingShardWriter if streaming else _WholeShardWriter)(path, specs)
            try:
                for key, tensor in tensors_for_shard(ckpt, mp, j, target):
                    writer.write(key, tensor)
                    done += tensor.numel() * tensor.element_size()
                    del tensor
                    report("write", done, total)
            except BaseException:
                writer.abort()
                raise
            writer.close()
            del writer
        shutil.copyfile(ckpt.path / "params.json", partial / "params.json")
        tok_note = _place_tokenizer(ckpt.path, partial, Path(tokenizer) if tokenizer else None)

        names = [f"consolidated.{j:02d}.pth" for j in range(mp)] + ["params.json"]
        sizes = [(partial / n).stat().st_size for n in names]
        hashed = [0]

        def on_bytes(n: int) -> None:
            hashed[0] += n
            report("checksum", hashed[0], sum(sizes))

        _fsync(write_checklist(partial, names, on_bytes))
        if dst.exists():
            dst.rmdir()  # checked empty above
        os.rename(partial, dst)
        dir_fd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    written = target or ckpt.dtypes[0]["tok_embeddings.weight"]
    return ReshardResult(src=ckpt.path, dst=dst, mp_in=ckpt.mp, mp_out=mp, dtype=DTYPE_NAMES.get(written, str(written)),
                         shard_bytes=per_shard, streaming=streaming,
                         peak_ram_bytes=peak_ram_bytes(ckpt, mp, target, streaming), tokenizer=tok_note,
                         cleaned=cleaned, seconds=time.monotonic() - started)
