"""What the loop, evaluator, render mode and `main.py` need from a trainable thing.

`Task` is required. The other Protocols are optional capabilities: callers check
`isinstance(task, Capability)` and say what is missing, instead of probing for names. A
capability that some of a task's configurations lack raises `CapabilityError`, saying why.
The loop never names a model; a task never touches checkpoints or shardings (another
run's weights arrive through `Pretrained`, restored by the loop).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

Batch = dict[str, jax.Array]


@runtime_checkable
class Task(Protocol):
    """A task builds its networks from the config and owns their maths.

    Every method is traced under `jax.jit` by the loop, which supplies the
    shardings; batches arrive as global arrays.
    """

    #: Batch keys the train step reads (others the pipeline yields stay on host).
    train_keys: tuple[str, ...]
    #: Batch keys the eval, FID and sample steps read (plus `mask` for eval).
    eval_keys: tuple[str, ...]

    def init_state(self, rng: jax.Array) -> Any:
        """The initial state; parameters boxed with logical axis names."""

    def train_step(self, state: Any, batch: Batch) -> tuple[Any, dict]:
        """One optimisation step → (new state, scalar metrics)."""

    def sample(self, state: Any, batch: Batch) -> dict[str, jax.Array]:
        """uint8 pictures of what the model produces: [H,W,C] → PNG, [T,H,W,C] → GIF."""


@runtime_checkable
class PerExampleMetrics(Protocol):
    """Quality scored per eval example (PSNR, bits/token, ...); `run_eval` averages them."""

    def eval_step(self, state: Any, batch: Batch) -> dict[str, jax.Array]:
        """Per-example metrics, each [batch]; the loop masks padding and averages."""


@runtime_checkable
class ScoredByFID(Protocol):
    """Images the FID/KID/IS evaluator scores against the eval split's real images."""

    #: What they are, for the protocol line ("reconstructions", "samples").
    fid_images_are: str

    def fid_images(self, state: Any, batch: Batch) -> jax.Array:
        """uint8 [batch, S, S, 3], one per eval example."""


@runtime_checkable
class RendersScenes(Protocol):
    """`--mode=render`: per input image a reconstruction, a depth map and an orbit."""

    def render_outputs(self, state: Any, batch: Batch) -> dict[str, jax.Array]:
        """{'reconstruction' [B,S,S,3], 'depth' [B,S,S,3], 'orbit' [B,T,S,S,3]} uint8."""


@runtime_checkable
class RendersSamples(Protocol):
    """`--mode=render` for generators: per seed a sample, its depth map and an orbit."""

    def render_samples(self, state: Any, batch: Batch) -> dict[str, jax.Array]:
        """batch['index'] [B] (the seeds) → {'image' [B,S,S,3], 'depth' [B,S,S,3],
        'orbit' [B,T,S,W,3]} uint8."""


@runtime_checkable
class HasDensity(Protocol):
    """`--mode=render --mesh`: the field of each input image at world points."""

    def density(self, state: Any, batch: Batch) -> dict[str, jax.Array]:
        """batch['points'] [B, P, 3] → {'density' [B, P], 'color' [B, P, 3]}."""


class CapabilityError(ValueError):
    """A capability this task's configuration lacks (e.g. a density field), with the reason;
    callers report it in one line before compiling anything."""


@runtime_checkable
class MeshesSamples(Protocol):
    """`--mode=render --seeds --mesh`: the field of each seed's sample at world points."""

    def sample_mesh_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) [3]: the world box the field is defined in; `CapabilityError` for a
        generator without a density field."""

    def sample_density(self, state: Any, batch: Batch) -> dict[str, jax.Array]:
        """batch['index'] [B] (the seeds), batch['points'] [B, P, 3] → {'density' [B, P],
        'color' [B, P, 3]} of the samples `render_samples` renders."""


@runtime_checkable
class EncodesCodes(Protocol):
    """`--mode=codes`: what a prior over codes stores per image (tools/precompute_codes.py)."""

    vocab_size: int
    length: int

    def encode_step(self, state: Any, batch: Batch) -> dict[str, jax.Array]:
        """{'codes' [B, length] int32, 'label' [B]}."""


@runtime_checkable
class CodeAutoencoder(Protocol):
    """A stage-1 task a prior over its codes builds on (VQ3D stage 2)."""

    def init_generator(self, rng: jax.Array, images: jax.Array) -> Any:
        """The generator's parameters (shapes are what a loaded run must match)."""

    def encode_codes(self, g_params: Any, images: jax.Array) -> jax.Array:
        """Images in [−1, 1] → code indices [B, L] int32."""

    def pictures_from_codes(self, g_params: Any, codes: jax.Array) -> dict[str, jax.Array]:
        """Code indices [B, L] → uint8 pictures ('image' at least)."""

    def inference_generator(self, state: Any) -> Any:
        """Of this task's state: the generator weights to evaluate with."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """Another run whose weights fill part of a freshly initialised state.

    `task` rebuilds that run's state (abstractly: nothing is initialised); `select`
    picks the sub-tree to take from it; `into` says where it goes in this task's state:
    an attribute of the TrainState, then dict keys, e.g. ('model_state', 'stage1'). Or
    `merge(state, selected)` returns the new state itself (e.g. every network the other
    run also has, Mimic3D's stage 2 on its stage 1), and `into` is unused.
    """

    name: str
    workdir: str
    task: Task
    select: Callable[[Any], Any]
    into: tuple[str, ...] = ()
    merge: Callable[[Any, Any], Any] | None = None


@runtime_checkable
class LoadsPretrained(Protocol):
    """A task built on other runs (stage 2 on stage 1); `runtime.load_pretrained` fills them."""

    def pretrained(self) -> Sequence[Pretrained]:
        """The runs to restore after a fresh init (may be empty)."""
