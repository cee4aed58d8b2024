"""Loading a state dict into a module with every mismatch named in one line, and the checks made
before a network is built from a config that came from outside: the tensor shapes the config
implies (from a network built on the "meta" device: no memory, no random numbers) against the
shapes a weights file holds (its safetensors header or a checkpoint's state dict), a bound on
the parameter count, and the sha256 an exported folder records for its weights."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

from seqtrack_mlflow.errors import CheckpointError


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with each kind of mismatch reported as CheckpointError
    (the first differing key and both shapes for a shape mismatch)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:3]}")
        raise CheckpointError(f"{source} does not match the model: {'; '.join(parts)}")
    wrong = [k for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{source} does not fit the model: {len(wrong)} tensor(s) of another shape, "
                              f"first {k}: {tuple(state[k].shape)} in the weights vs {tuple(own[k].shape)} "
                              "in the model")
    module.load_state_dict(state, strict=True)


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
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:3]}")
        raise CheckpointError(f"{source} does not match its config's model: {'; '.join(parts)}")
    wrong = [k for k, v in expected.items() if tuple(found[k]) != tuple(v)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{source} does not fit its config's model: {len(wrong)} tensor(s) of another "
                              f"shape, first {k}: {tuple(found[k])} in the weights vs {tuple(expected[k])} "
                              "in the model")


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
