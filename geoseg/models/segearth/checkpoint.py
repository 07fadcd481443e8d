"""Reading a SegEarth-R1 checkpoint directory into the module, with one clear error when it does not fit.

safetensors only (single file, `model.safetensors.index.json` shards, or any `*.safetensors`);
pickled `pytorch_model*.bin` only with `allow_pickle`, and then with `torch.load(weights_only=True)`.

Two layouts of the Phi attention load:
- published: the SegEarth-R1 checkpoints were written by `save_pretrained` under transformers
  4.36.2, whose Phi has ONE fused projection per layer, `model.layers.N.self_attn.query_key_value`
  ([3 * hidden, hidden] + bias), rows interleaved per head Bloom-style (4.36.2 views the projection
  output as [batch, seq, heads, 3, head_dim]): row (h * 3 + s) * head_dim + d is head h, slot s
  (0 = q, 1 = k, 2 = v), dim d. It is split once here into `q_proj` / `k_proj` / `v_proj`;
- split: `q_proj` / `k_proj` / `v_proj` as the installed transformers' Phi names them (a checkpoint
  re-saved by transformers >= 4.37 or written by `geoseg train`).
Every other published name (`embed_tokens`, `final_layernorm`, `input_layernorm`, `mlp.fc1/fc2`,
`self_attn.dense`) is the same in both.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from geoseg.errors import ModelLoadError
from geoseg.io.fileio import replace_directory

# Keys a checkpoint may carry that are not parameters here (4.36-era non-persistent buffers that
# some savers still write); they are dropped silently.
IGNORED_KEYS = (re.compile(r".*\.rotary_emb\.inv_freq$"),)
# Buffers this module can rebuild itself: missing ones are fine.
OPTIONAL_KEYS = (re.compile(r"^model\.vision_tower\..*\.relative_position_index$"),)
# Renames from other layouts to the names of the installed transformers' PhiModel used here.
KEY_RENAMES: tuple[tuple[re.Pattern, str], ...] = ()
# transformers 4.36.2 Phi's fused attention projection (see the module docstring).
FUSED_QKV = re.compile(r"^(?P<attn>.+\.self_attn)\.query_key_value\.(?P<kind>weight|bias)$")
SPLIT_QKV = ("q_proj", "k_proj", "v_proj")


def weight_files(path: Path, allow_pickle: bool) -> tuple[list[Path], bool]:
    """The weight files of a checkpoint directory and whether they are pickles."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return _indexed(index), False
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files, False
    pickles = sorted(path.glob("pytorch_model*.bin"))
    if not pickles:
        raise ModelLoadError(
            f"{path}: no *.safetensors weights found; download the full checkpoint"
        )
    if not allow_pickle:
        raise ModelLoadError(
            f"{path}: only pickled weights ({pickles[0].name}) found; they can run code when loaded, "
            "so pass --allow-pickle if you trust them (or convert them to safetensors)"
        )
    index = path / "pytorch_model.bin.index.json"
    return (_indexed(index) if index.is_file() else pickles), True


def _indexed(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{index} is not a readable shard index: {e}") from None
    files = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(f"{index}: shard(s) {', '.join(missing)} are missing; re-download")
    return files


def iter_tensors(
    files: Iterable[Path], pickled: bool, device: str
) -> Iterator[tuple[str, torch.Tensor]]:
    for file in files:
        if pickled:
            state = torch.load(file, map_location=device, weights_only=True)
            yield from state.items()
            continue
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt", device=device) as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    yield key, f.get_tensor(key)
        except Exception as e:  # a truncated or foreign file: one line, not a traceback
            raise ModelLoadError(
                f"{file}: cannot read safetensors ({type(e).__name__}: {e})"
            ) from None


def _rename(key: str) -> str:
    for pattern, repl in KEY_RENAMES:
        key = pattern.sub(repl, key)
    return key


def split_fused_qkv(
    fused: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v rows of a 4.36.2 Phi `query_key_value`: weight [3 * H, in] or bias [3 * H].

    Its rows are grouped per head, not stacked [Q; K; V]: row (h * 3 + s) * head_dim + d holds
    head h, slot s (0 = q, 1 = k, 2 = v), dim d. Each result has rows h * head_dim + d."""
    rows, rest = fused.shape[0], tuple(fused.shape[1:])
    if rows % (3 * heads):
        raise ValueError(f"{rows} fused rows are not 3 x {heads} heads x head_dim")
    grouped = fused.reshape(heads, 3, rows // (3 * heads), *rest)
    q, k, v = (grouped[:, s].reshape(rows // 3, *rest).contiguous() for s in range(3))
    return q, k, v


def _fused_heads(module: nn.Module, attn: str) -> int | None:
    """The head count of the Phi attention at `attn` when it has the split projections."""
    try:
        layer = module.get_submodule(attn)
    except AttributeError:
        return None
    config = getattr(layer, "config", None)
    if not all(hasattr(layer, name) for name in SPLIT_QKV) or config is None:
        return None
    return int(config.num_attention_heads)


def _listing(keys: list[str], limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... (+{len(keys) - limit} more)" if len(keys) > limit else shown


def load_weights(
    module: nn.Module,
    files: list[Path],
    pickled: bool,
    device: torch.device,
    dtype: torch.dtype,
    where: Path,
    fresh_prefixes: tuple[str, ...] = (),
) -> None:
    """Assign every tensor of the checkpoint to `module` (built on the meta device) or raise.

    A fused 4.36.2 `query_key_value` is split into the module's q/k/v_proj on the way (either
    layout loads; see the module docstring). All problems are collected first and reported
    together: missing, unexpected, misshapen and twice-given keys. Keys starting with one of
    `fresh_prefixes` may be missing: they keep the module's own initialisation (e.g. the fusion
    blocks of a bi-temporal model started from a SegEarth-R1 checkpoint; the module must then be
    built on a real device).
    """
    expected = module.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    unexpected, misshapen, twice = [], [], []
    accounted: set[str] = set()  # expected keys already reported as misshapen
    # safetensors wants an explicit CUDA index; MPS tensors are moved after reading on the CPU.
    load_device = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu"
    for raw_key, tensor in iter_tensors(files, pickled, load_device):
        if any(p.match(raw_key) for p in IGNORED_KEYS):
            continue
        key = _rename(raw_key)
        pieces = [(key, tensor)]
        fused = FUSED_QKV.match(key)
        if fused and key not in expected:
            attn, kind = fused["attn"], fused["kind"]
            targets = [f"{attn}.{name}.{kind}" for name in SPLIT_QKV]
            heads = _fused_heads(module, attn)
            if heads is None or not all(t in expected for t in targets):
                unexpected.append(key)
                continue
            want = (sum(expected[t].shape[0] for t in targets), *expected[targets[0]].shape[1:])
            if tuple(tensor.shape) != want or tensor.shape[0] % (3 * heads):
                misshapen.append(f"{key} {tuple(tensor.shape)} vs {want}")
                accounted.update(targets)
                continue
            pieces = list(zip(targets, split_fused_qkv(tensor, heads), strict=True))
        for key, tensor in pieces:
            if key not in expected:
                unexpected.append(key)
            elif key in loaded:  # e.g. both the fused and the split projection of a layer
                twice.append(key)
            elif tuple(tensor.shape) != tuple(expected[key].shape):
                misshapen.append(f"{key} {tuple(tensor.shape)} vs {tuple(expected[key].shape)}")
                accounted.add(key)
            else:
                floating = expected[key].is_floating_point()
                loaded[key] = tensor.to(
                    device=device, dtype=dtype if floating else expected[key].dtype
                )
    missing = [
        k
        for k in expected
        if k not in loaded
        and k not in accounted
        and not any(p.match(k) for p in OPTIONAL_KEYS)
        and not k.startswith(fresh_prefixes or ("\0",))
    ]
    if missing or unexpected or misshapen or twice:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({_listing(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({_listing(unexpected)})")
        if misshapen:
            problems.append(f"{len(misshapen)} misshapen ({_listing(misshapen, 3)})")
        if twice:
            problems.append(f"{len(twice)} given twice ({_listing(twice)})")
        raise ModelLoadError(
            f"{where}: the weights do not fit the SegEarth-R1 architecture described by its "
            f"config.json: {'; '.join(problems)}; use an unmodified SegEarth-R1 checkpoint"
        )
    module.load_state_dict(loaded, strict=False, assign=True)


def weights_sha256(files: list[Path]) -> str:
    """sha256 of the weights (of the concatenated per-file digests when sharded).

    A Hugging Face cache stores each LFS file under its sha256, so the digest is read from the
    blob name when the file is such a link instead of hashing gigabytes again.
    """
    digests = []
    for file in files:
        target = file.resolve()
        if file.is_symlink() and re.fullmatch(r"[0-9a-f]{64}", target.name):
            digests.append(target.name)
            continue
        h = hashlib.sha256()
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        digests.append(h.hexdigest())
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def save_checkpoint(
    state: dict[str, torch.Tensor],
    config: dict,
    tokenizer,
    directory: Path,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a plain checkpoint directory (config.json + model.safetensors + tokenizer files) that
    `load_segearth_segmenter` reads; floating tensors are cast to `dtype` when given.

    Written beside the target and renamed into place, so a crash never leaves half a checkpoint."""
    import shutil

    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in state.items()
    }
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(str(tmp))
    return replace_directory(tmp, directory)
