"""Comparing a state dict with a module's and loading it with every mismatch named in one line;
and the checks made before a network is built from a config that came from outside: the tensor
shapes the config
implies (from a network built on the "meta" device: no memory, no random numbers) against the
shapes a weights file holds (its safetensors header or a checkpoint's state dict), a bound on
the parameter count, and the sha256 an exported folder records for its weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

from seqtrack_mlflow.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """How a state dict differs from a module's: names in the module's (or the state's) order."""
    missing: list[str]      # in the module, not in the state
    unexpected: list[str]   # in the state, not in the module
    wrong_shape: list[str]  # in both, of another shape (checked only when the names match)


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def compare(own: Mapping[str, torch.Tensor | tuple[int, ...]],
            state: Mapping[str, torch.Tensor | tuple[int, ...]]) -> Mismatch | None:
    """None when `state` has exactly `own`'s names and shapes (tensors, or shapes as tuples);
    else what differs."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [] if missing or unexpected else [k for k in own if _shape(state[k]) != _shape(own[k])]
    return Mismatch(missing, unexpected, wrong) if missing or unexpected or wrong else None


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with each kind of mismatch reported as CheckpointError
    (the first differing key and both shapes for a shape mismatch)."""
    own = module.state_dict()
    _raise_mismatch(compare(own, state), own, state, source, "the model")
    module.load_state_dict(state, strict=True)


def _raise_mismatch(diff: Mismatch | None, own: Mapping, state: Mapping, source: str, model: str) -> None:
    """One CheckpointError line for a mismatch: the counts and first names, or the first key of
    another shape with both shapes."""
    if diff is not None and (diff.missing or diff.unexpected):
        parts = []
        if diff.missing:
            parts.append(f"{len(diff.missing)} missing key(s) e.g. {diff.missing[:3]}")
        if diff.unexpected:
            parts.append(f"{len(diff.unexpected)} unexpected key(s) e.g. {diff.unexpected[:3]}")
        raise CheckpointError(f"{source} does not match {model}: {'; '.join(parts)}")
    if diff is not None:
        k = diff.wrong_shape[0]
        raise CheckpointError(f"{source} does not fit {model}: {len(diff.wrong_shape)} tensor(s) of another "
                              f"shape, first {k}: {_shape(state[k])} in the weights vs {_shape(own[k])} "
                              f"in the model")


# Most parameters a network built from an outside config may have: ~4 GB of float32, 13x the
# official SeqTrack-L384 (~310 M). The per-field bounds of config_rules.py allow larger products.
MAX_PARAMETERS = 1_000_000_000


def meta_shapes(build: Callable[[], nn.Module]) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the state dict of the module `build()` makes, built on the "meta"
    device: nothing is allocated and no random number is drawn."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def safetensors_shapes(path: str | Path, source: str) -> dict[str, tuple[int, ...]]:
    """{name: shape} from a safetensors file's header; no tensor is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{source} is not a readable safetensors file: {exc}") from None


def check_shapes(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
                 source: str) -> None:
    """CheckpointError (one line) when the weights' names or shapes differ from the network's,
    or the network is over MAX_PARAMETERS; called before the network is built."""
    count = sum(int(torch.Size(s).numel()) for s in expected.values())
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{source}: its config asks for a network of {count:,} parameters, more "
                              f"than the limit of {MAX_PARAMETERS:,} (MAX_PARAMETERS)")
    _raise_mismatch(compare(expected, found), expected, found, f"{source}", "its config's model")


def check_weights_digest(path: str | Path, recorded: object, source: str) -> None:
    """CheckpointError when the file's sha256 differs from the one its config.json records
    (`recorded`; '' or None = none recorded, nothing to check)."""
    if not recorded:
        return
    from seqtrack_mlflow.fsutil import sha256_file

    actual = sha256_file(path)
    if actual != str(recorded):
        raise CheckpointError(f"{source}: sha256 {actual[:16]}... differs from {str(recorded)[:16]}... recorded in "
                              "its config.json: the weights were replaced or damaged; fetch or export them again")
