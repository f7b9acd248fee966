r"""Command line: train, evaluate or sample a model from a config.

  python -m vq3d_jax.main --config=configs/vq3d_stage1.py:tiny --workdir=DIR \
      [--mode=train|eval|sample|render|codes|plan] [--config.key=value ...]

--mode=codes (VQ3D stage 2) encodes data.name's --splits with the frozen stage-1
encoder into a dataset of codes (default WORKDIR/codes) that training then reads
with --config.data.codes_dir.

--mode=render (NeRF decoders) writes, per image of --images (a folder) or of the
eval split, a reconstruction, a colour-mapped depth map, an orbit video and,
with --mesh, a .ply mesh, under --output_dir (default WORKDIR/render/<step>). For a
generator (the GAN heads) it renders --seeds (default 0..--num_images-1): per seed the
sample, its depth map, an orbit video with the depth beside it and, with --mesh (the
tri-plane heads: EG3D, Mimic3D), the sample's .ply mesh.

--mode=plan prints what the config's train step costs per device on its mesh, without
allocating the model or reading data, on the host CPU in seconds (vq3d_jax/plan.py):
parameters per module; bytes per device of params, optimizer state, gradients, other
state, batch and activations (an estimate from the step's jaxpr, or XLA's memory analysis
of the step compiled for --plan_devices simulated CPU devices, per --plan_compile); model
FLOPs per step and the step time and MFU they predict on --plan_accelerator, with a
warning and what would fit when a device's memory overflows. It also writes
WORKDIR/plan.json. --plan_devices defaults to the mesh's size (an axis of -1 counts 1,
e.g. --config.mesh.fsdp=64 plans 64 devices).

Running the same command again with the same workdir resumes from the latest
checkpoint. Cluster launchers (launch/) add --distributed.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: configs/<file>.py:<preset>.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and samples go here.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "sample", "render", "codes", "plan"], "What to run."
)
_IMAGES = flags.DEFINE_string(
    "images", None, "--mode=render: a folder of PNG/JPEG images (default: the eval split)."
)
_NUM_IMAGES = flags.DEFINE_integer(
    "num_images", 8, "--mode=render: images of the eval split (a generator: seeds 0..N-1).")
_SEEDS = flags.DEFINE_string("seeds", "", "--mode=render, generators: e.g. 0,5,12.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "--mode=render / codes: where files go (default under --workdir)."
)
_SPLITS = flags.DEFINE_list("splits", ["train", "validation"], "--mode=codes: splits to encode.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "--mode=codes: replace --output_dir.")
_VIDEO = flags.DEFINE_enum("video", "gif", ["gif", "mp4"], "--mode=render: orbit format.")
_MESH = flags.DEFINE_bool("mesh", False, "--mode=render: also write a .ply mesh.")
_MESH_RESOLUTION = flags.DEFINE_integer("mesh_resolution", 64, "Density grid per axis.")
_MESH_LEVEL = flags.DEFINE_float(
    "mesh_level", 10.0, "Marching-cubes density level (σ per world unit)."
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() (TPU pods and SLURM: arguments from the cluster).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for launches without a cluster."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --coordinator_address.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --coordinator_address.")
_EXIT_TIMEOUT = flags.DEFINE_integer(
    "exit_timeout", 1800,
    "Multi-process runs: seconds a process that has finished (checkpoints committed, "
    "metrics written) waits for the others before the distributed runtime shuts down; a "
    "slower host's last checkpoint commit must fit.")
_PLAN_DEVICES = flags.DEFINE_integer(
    "plan_devices", None,
    "--mode=plan: devices to plan for (default: the mesh's sizes' product, -1 counting 1).")
_PLAN_ACCELERATOR = flags.DEFINE_string(
    "plan_accelerator", "h100", "--mode=plan: the chip whose peak, HBM bandwidth and memory "
    "the plan is held against (vq3d_jax/planning/roofline.py:ACCELERATORS: v4, v5e, v5p, v6e, "
    "a100, h100, h200).")
_PLAN_MFU = flags.DEFINE_float(
    "plan_mfu", 0.4, "--mode=plan: the MFU assumed for the compute time of a step.")
_PLAN_COMPILE = flags.DEFINE_enum(
    "plan_compile", "auto", ["auto", "always", "never"],
    "--mode=plan: also compile the step on simulated CPU devices for XLA's memory analysis "
    "(auto: when that takes seconds and the step has no remat; the CPU ignores remat).")
flags.mark_flags_as_required(["config", "workdir"])
# More simulated CPU devices than this make jax's start slow (8192: 70 s); --plan_compile=auto
# does not compile for a larger mesh.
_MAX_AUTO_SIMULATED_DEVICES = 512


def _initialize_distributed() -> None:
    from vq3d_jax.train import distributed

    if _COORDINATOR.value or _DISTRIBUTED.value:
        distributed.initialize(
            coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value, initialization_timeout_s=300,
            exit_timeout_s=_EXIT_TIMEOUT.value)


def _finish_distributed() -> None:
    """Every process meets the others before the runtime shuts down (train/distributed.py)."""
    from vq3d_jax.train import distributed

    try:
        distributed.finish(_EXIT_TIMEOUT.value)
    except distributed.EndOfRunTimeout as err:
        sys.exit(f"FATAL: {err}")


def _plan() -> None:
    """--mode=plan on the host CPU; its simulated devices are set before jax is imported."""
    config = _CONFIG.value
    num_devices = _PLAN_DEVICES.value or math.prod(
        max(int(config.mesh[axis]), 1) for axis in ("data", "fsdp", "tensor"))
    os.environ["JAX_PLATFORMS"] = "cpu"
    if _PLAN_COMPILE.value == "always" or (
            _PLAN_COMPILE.value == "auto" and num_devices <= _MAX_AUTO_SIMULATED_DEVICES):
        flag = "--xla_force_host_platform_device_count"
        kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(flag)]
        os.environ["XLA_FLAGS"] = " ".join([*kept, f"{flag}={num_devices}"])
    from vq3d_jax import plan

    try:
        plan.run(config, _WORKDIR.value, num_devices, _PLAN_ACCELERATOR.value, _PLAN_MFU.value,
                 _PLAN_COMPILE.value)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"FATAL: {err}")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _MODE.value == "plan":  # no dataset, no distributed runtime, no parameters
        _plan()
        return
    _initialize_distributed()
    _run_mode()
    _finish_distributed()


def _run_mode() -> None:
    """The --mode's work; a fatal error exits here, before the end-of-run barrier."""
    import jax

    from vq3d_jax.datasets import pipeline
    from vq3d_jax.tasks import get_task
    from vq3d_jax.train import loop
    from vq3d_jax.train.checkpoint import CheckpointWriteError
    from vq3d_jax.train.evaluation import run_eval, write_samples
    from vq3d_jax.train.nonfinite import NonFiniteLossError
    from vq3d_jax.train.runtime import build_runtime, restore_for_inference
    from vq3d_jax.train.task import EncodesCodes

    config = _CONFIG.value
    workdir = _WORKDIR.value
    _make_workdir(workdir)
    logging.info("vq3d_jax %s mode on %d devices (%s), process %d/%d.", _MODE.value,
                 jax.device_count(), jax.devices()[0].platform, jax.process_index(),
                 jax.process_count())
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2))
    try:
        pipeline.prepare(config.data, splits=_splits_read(config))
    except pipeline.DataConfigError as err:
        sys.exit(f"FATAL: {err}")
    if _MODE.value == "codes":
        from vq3d_jax.tools import precompute_codes

        output_dir = _OUTPUT_DIR.value or os.path.join(workdir, "codes")
        try:
            precompute_codes.run(config, output_dir, _SPLITS.value, overwrite=_OVERWRITE.value)
        except FileExistsError as err:
            sys.exit(f"FATAL: {err}")
        return

    try:
        task = get_task(config)  # a setting the model cannot work with: one line
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"FATAL: {err}")
    runtime = build_runtime(task, config)

    def make_eval_iter():
        return pipeline.create_eval_iterator(
            config.data,
            split=config.data.eval_split,
            global_batch_size=config.eval.global_batch_size,
            num_examples=config.eval.num_examples or None,
        )

    fid = None
    # Not for a training run that never evaluates (eval_every = -1): no weights to load,
    # no "FID is off" to say.
    if _MODE.value == "eval" or (_MODE.value == "train" and config.eval_every >= 0):
        from vq3d_jax.metrics import evaluator

        fid = evaluator.from_config(config, runtime, make_eval_iter().num_examples)

    if _MODE.value == "train":
        # The held-out novel views are for eval only, unless a task asks for its training
        # scenes' views as more real images (data.train_on_novel_views: the 3D GANs).
        train_data = config.data.copy_and_resolve_references()
        train_data.with_novel_views = bool(config.data.get("train_on_novel_views", False))
        codes_checks = {}
        if config.data.get("codes_dir"):  # precomputed codes must fit the prior
            if not isinstance(task, EncodesCodes):
                sys.exit(f"FATAL: data.codes_dir is set, but config.task={config.task!r} "
                         "does not train on codes.")
            codes_checks = {"codes_length": task.length, "codes_vocab_size": task.vocab_size}
        train_iter = pipeline.create_train_iterator(
            train_data, global_batch_size=config.global_batch_size, seed=config.seed,
            **codes_checks,
        )
        try:
            loop.train(runtime, workdir, train_iter, make_eval_iter, fid)
        except (CheckpointWriteError, NonFiniteLossError) as err:
            sys.exit(f"FATAL: {err}")
    else:
        from vq3d_jax.train.writer import MetricWriter

        state, step = restore_for_inference(runtime, workdir)
        writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
        try:
            if _MODE.value == "eval":
                run_eval(runtime, state, make_eval_iter(), writer, step, fid)
            elif _MODE.value == "render":
                _render(runtime, state, step, workdir)
            else:
                batch = next(iter(make_eval_iter()))
                write_samples(
                    runtime, state, {k: batch[k] for k in task.eval_keys}, writer, step
                )
        finally:
            writer.close()


def _make_workdir(workdir: str) -> None:
    """Creates --workdir and writes a file there, so that a path under a file or on a full
    or read-only disk fails now, in one line, not at the first checkpoint after compiling
    (permission bits alone tell nothing to a process running as root)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test-"):
            pass
    except OSError as err:
        sys.exit(f"FATAL: --workdir={workdir!r} is not a writable folder: {err.strerror} "
                 f"({err.filename}).")


def _splits_read(config) -> list[str]:
    """The splits of data.name this mode reads (training on codes reads its own)."""
    if _MODE.value == "codes":
        return list(_SPLITS.value)
    if _MODE.value == "render" and _IMAGES.value:
        return []
    if _MODE.value == "train" and not config.data.get("codes_dir"):
        return [config.data.train_split, config.data.eval_split]
    return [config.data.eval_split]


def _render(runtime, state, step: int, workdir: str) -> None:
    from vq3d_jax import render_mode
    from vq3d_jax.train.task import CapabilityError, RendersSamples

    config = runtime.config
    out_dir = _OUTPUT_DIR.value or os.path.join(workdir, "render", str(step))
    mesh = None
    if _MESH.value:
        mesh = render_mode.MeshOptions(_MESH_RESOLUTION.value, _MESH_LEVEL.value)
    video_ext = "." + _VIDEO.value
    try:  # a task without what was asked (e.g. a density field) stops before compiling
        if isinstance(runtime.task, RendersSamples):
            render_mode.render_seeds(runtime, state, _seeds(), out_dir, video_ext=video_ext,
                                     mesh=mesh)
            return
        if _IMAGES.value:
            names, images, _ = render_mode.load_folder(_IMAGES.value, config.data.image_size)
        else:
            names, images = render_mode.load_split(
                config.data, config.data.eval_split, _NUM_IMAGES.value,
                global_batch_size=config.eval.global_batch_size,
            )
        render_mode.render(runtime, state, names, images, out_dir, video_ext=video_ext,
                           mesh=mesh)
    except CapabilityError as err:
        sys.exit(f"FATAL: {err}")


def _seeds() -> list[int]:
    """--seeds, or 0..--num_images−1."""
    if not _SEEDS.value:
        return list(range(_NUM_IMAGES.value))
    try:
        return [int(s) for s in _SEEDS.value.split(",") if s.strip()]
    except ValueError:
        sys.exit(f"FATAL: --seeds={_SEEDS.value!r}: comma-separated integers, e.g. 0,5,12.")


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with an unknown `--config.key` reported as one clear line."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as err:
        key = str(err).strip("\"'")
        culprit = next((a for a in argv if a.startswith("--config.") and key in a), key)
        sys.exit(
            f"FATAL: unknown config key {key!r} in {culprit}. The config is locked: only "
            "keys its preset defines can be overridden (see the configs/ file)."
        )
    except flags.Error as err:
        sys.exit(f"FATAL flags parsing error: {err}\nPass --help for usage.")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
