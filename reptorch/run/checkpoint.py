"""Checkpoints: tensors in a safetensors file, everything else in a JSON file beside it.

`ckpt-<iteration>.safetensors` holds phi (`phi.<name>`), the inner optimiser's moments
(`inner.exp_avg.<name>`, `inner.exp_avg_sq.<name>`) and the outer optimiser's tensors
(`outer.<path>`); nothing in it can run code when loaded. `ckpt-<iteration>.json` holds the
iteration, the inner step counter, the RNG states (base64 of `Generator.get_state()`), the
non-tensor part of the outer state, library versions and the sha256 of the tensor file, so a
truncated or corrupt file is detected (`CheckpointError`). Both are written atomically, tensors
first: a JSON file exists only once its tensors are complete, and the newest JSON file is the
checkpoint to resume from.
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from reptorch import __version__
from reptorch.errors import CheckpointError
from reptorch.inner_optim import AdamState, SGDState
from reptorch.run.io import atomic_write_bytes, atomic_write_json
from reptorch.tree import Params

FORMAT = "reptorch-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.json$")


@dataclass
class Checkpoint:
    """The state of a run after `iteration` completed meta-iterations."""

    iteration: int
    phi: Params
    inner_state: Any  # AdamState or SGDState
    outer_state: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> Generator state


def _encode(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for a nested state dict: tensors move to `tensors` and leave {"__tensor__": key};
    dicts become {"__dict__": [[key, value], ...]} so integer keys survive."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {"__dict__": [[k, _encode(v, f"{prefix}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
    return value


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict) and "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if isinstance(value, dict) and "__dict__" in value:
        return {k: _decode(v, tensors) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def paths(directory: Path, iteration: int) -> tuple[Path, Path]:
    """(tensor file, metadata file) of the checkpoint at `iteration`."""
    stem = f"ckpt-{iteration:08d}"
    return directory / f"{stem}.safetensors", directory / f"{stem}.json"


def list_checkpoints(directory: Path) -> list[int]:
    """Iterations of the checkpoints in `directory` (those with a metadata file), ascending."""
    if not Path(directory).is_dir():
        return []
    found = (_NAME.match(p.name) for p in Path(directory).iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def save_checkpoint(directory: Path, ckpt: Checkpoint, keep: int = 3) -> Path:
    """Writes the checkpoint atomically (tensors, then metadata); keeps the newest `keep`."""
    directory = Path(directory)
    tensors = {f"phi.{k}": v.detach().cpu().contiguous() for k, v in ckpt.phi.items()}
    inner: dict[str, Any] = {"type": "sgd", "step": int(ckpt.inner_state.step)}
    if isinstance(ckpt.inner_state, AdamState):
        inner["type"] = "adam"
        for slot in ("exp_avg", "exp_avg_sq"):
            for k, v in getattr(ckpt.inner_state, slot).items():
                tensors[f"inner.{slot}.{k}"] = v.detach().cpu().contiguous()
    outer = _encode(ckpt.outer_state, "outer", tensors)
    data = safetensors.torch.save(tensors)
    tensor_path, meta_path = paths(directory, ckpt.iteration)
    atomic_write_bytes(tensor_path, data)
    rng = {k: base64.b64encode(bytes(v.numpy())).decode() for k, v in ckpt.rng.items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "iteration": ckpt.iteration,
        "tensors": tensor_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "inner": inner,
        "outer": outer,
        "rng": rng,
        "versions": {
            "reptorch": __version__,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
            "python": platform.python_version(),
        },
    }
    atomic_write_json(meta_path, meta)
    for old in list_checkpoints(directory)[:-keep]:
        old_tensors, old_meta = paths(directory, old)
        old_meta.unlink(missing_ok=True)
        old_tensors.unlink(missing_ok=True)
    return meta_path


def load_checkpoint(directory: Path, iteration: int | None = None) -> Checkpoint:
    """The newest checkpoint in `directory` (or the one at `iteration`), verified by sha256."""
    directory = Path(directory)
    if iteration is None:
        found = list_checkpoints(directory)
        if not found:
            raise CheckpointError(
                f"{directory} holds no checkpoint (no ckpt-*.json): train into it first with "
                f"`reptorch train --checkpoint {directory}`"
            )
        iteration = found[-1]
    tensor_path, meta_path = paths(directory, iteration)
    if not meta_path.exists() and directory.is_dir():
        kept = ", ".join(f"{i:,}" for i in list_checkpoints(directory)) or "none"
        raise CheckpointError(
            f"{directory} holds no checkpoint at iteration {iteration:,} (kept: {kept}): "
            f"choose one of those"
        )
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} v{VERSION} file")
        data = tensor_path.read_bytes()
    except (OSError, ValueError, AttributeError) as error:
        raise CheckpointError(f"cannot read checkpoint {meta_path}: {error}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.get("sha256"):
        raise CheckpointError(
            f"checkpoint {tensor_path} is corrupt or truncated (sha256 {digest[:12]}..., "
            f"expected {str(meta.get('sha256'))[:12]}...): delete ckpt-{iteration:08d}.* to use "
            f"an earlier checkpoint"
        )
    try:
        tensors = safetensors.torch.load(data)
        phi = {k[4:]: v for k, v in tensors.items() if k.startswith("phi.")}
        inner_meta = meta["inner"]
        if inner_meta["type"] == "adam":
            slots = [
                {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}
                for p in ("inner.exp_avg.", "inner.exp_avg_sq.")
            ]
            inner = AdamState(int(inner_meta["step"]), slots[0], slots[1])
        else:
            inner = SGDState(int(inner_meta["step"]))
        rng = {
            k: torch.frombuffer(bytearray(base64.b64decode(v)), dtype=torch.uint8)
            for k, v in meta["rng"].items()
        }
        outer = _decode(meta["outer"], tensors)
    except Exception as error:  # any malformed content: one line, not a traceback
        raise CheckpointError(f"checkpoint {meta_path} is malformed: {error}") from None
    return Checkpoint(int(meta["iteration"]), phi, inner, outer, rng)
