"""The generic loop's services: sharding invariance and checkpoint robustness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import override, random_batch, steps_per_layout, tiny_task_config, with_a_wrong_row
from float_bounds import assert_close_up_to_rounding, assert_same_steps

from vq3d_jax.tasks import get_task
from vq3d_jax.train import loop, runtime, sharding
from vq3d_jax.train.checkpoint import Checkpointer, CheckpointShapeError


def test_sharded_and_accumulated_stage1_step_equals_the_plain_step():
    """One VQ3D stage-1 step (NeRF decoder, both discriminators with R1, depth loss) on
    data=2 × fsdp=2 × tensor=2 simulated devices, its gradients accumulated over 2
    micro-batches of 4, == the step on 1 device over the whole batch of 8, up to float
    rounding (tests/float_bounds.py); the same step fed one wrong row is not. At 16²
    (4 × 4 tokens, 8² renders, discriminators of two blocks), without the second (depth)
    ViT decoder and the importance pass: more of the same layers, which made the test's
    two step compiles ~47 s instead of ~39 s on two cores."""
    assert jax.device_count() == 8

    def config():
        return override(tiny_task_config(stage1=True), {
            "model.depth_decoder": False, "render.num_importance": 0,
            "data.image_size": 16, "model.patch_size": 4, "render.resolution": 8})

    batch = random_batch(size=16)
    (state_1, metrics_1), (state_8, metrics_8), (wrong_8, _) = steps_per_layout(
        config,
        [(jax.devices()[:1], dict(data=1, fsdp=1), 1),
         (None, dict(data=2, fsdp=2, tensor=2), 2)],
        batch, corrupted=with_a_wrong_row(batch))
    assert_close_up_to_rounding(metrics_8, metrics_1, keys=(
        "loss/total", "loss/d", "loss/novel_d", "loss/vq", "loss/depth_pointwise"))
    assert float(metrics_1["gan/active"]) == 1.0  # the discriminator step ran too
    # The warm-up's first learning rate is 0: the moments hold the gradients of G and both
    # Ds, the weights must not move (but for the quantizer's restarted codes).
    assert_same_steps(state_8, state_1, config(), steps=1)
    with pytest.raises(AssertionError, match="beyond float rounding"):
        assert_same_steps(wrong_8, state_1, config(), steps=1)


def test_eval_and_sample_schedule_every_n_at_the_end_or_never():
    def due_steps(every, total=7):
        return [s for s in range(1, total + 1) if loop._due(s, every, final=s == total)]

    assert due_steps(3) == [3, 6, 7]
    assert due_steps(0) == [7]
    assert due_steps(-1) == []


def test_parameters_are_sharded_by_the_rules():
    config = tiny_task_config(data=2, fsdp=4)
    rt = runtime.build_runtime(get_task(config), config)
    specs = {
        jax.tree_util.keystr(p): s.spec
        for p, s in jax.tree_util.tree_leaves_with_path(rt.state_shardings)
    }
    fsdp_sharded = [k for k, s in specs.items() if "fsdp" in jax.tree.leaves(tuple(s))]
    assert fsdp_sharded, "no parameter is fsdp-sharded under ('embed', 'fsdp')"


def test_indivisible_dims_replicate_and_big_unannotated_params_fall_back_to_fsdp():
    import flax.linen as nn

    mesh = sharding.create_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    rules = (("embed", "fsdp"),)
    abstract = {
        "divisible": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((8, 3), jnp.float32),
                                             ("embed", None)),
        "indivisible": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((6, 3), jnp.float32),
                                               ("embed", None)),
        # 2 MiB, unannotated: above a 1 MiB threshold → fsdp on its largest divisible dim.
        "big": jax.ShapeDtypeStruct((6, 2**16 + 4), jnp.float32),
        "small": jax.ShapeDtypeStruct((8, 8), jnp.float32),
    }
    specs = {
        k: v.spec
        for k, v in sharding.state_shardings(abstract, mesh, rules, fallback_min_mb=1.0).items()
    }
    assert specs["divisible"] == jax.sharding.PartitionSpec("fsdp", None)
    assert specs["indivisible"] == jax.sharding.PartitionSpec(None, None)
    assert specs["big"] == jax.sharding.PartitionSpec(None, "fsdp")
    assert specs["small"] == jax.sharding.PartitionSpec(None, None)


def test_global_batch_must_divide_the_batch_axes_times_the_micro_batches():
    config = tiny_task_config(data=2, fsdp=4)
    config.global_batch_size = 12
    with pytest.raises(ValueError, match="not divisible"):
        runtime.build_runtime(get_task(config), config)
    config.global_batch_size = 8  # 8 devices, but 2 micro-batches of 4 cannot span them
    config.grad_accum_steps = 2
    with pytest.raises(ValueError, match="grad_accum_steps=2 × the batch axes"):
        runtime.build_runtime(get_task(config), config)


def _mesh8():
    return sharding.create_mesh({"data": 2, "fsdp": 4, "tensor": 1})


def _tree(mesh, scale=1.0):
    fsdp = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    return {
        "w": jax.device_put(jnp.arange(32.0) * scale, fsdp),
        "step": jnp.asarray(3, jnp.int32),
    }


def _abstract(tree):
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree
    )


def test_restore_onto_another_mesh_and_skip_damaged_latest(tmp_path):
    mesh = _mesh8()
    ckpt = Checkpointer(str(tmp_path), keep=3, save_every=1)
    ckpt.save(1, _tree(mesh, 1.0))
    ckpt.save(2, _tree(mesh, 2.0))
    ckpt.close()
    # Damage every data file of the newest finished checkpoint.
    for f in (tmp_path / "2" / "state").rglob("*"):
        if f.is_file() and "metadata" not in f.name:
            f.write_bytes(b"garbage")
    one_device = sharding.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    target = _abstract(_tree(one_device))
    restored, step = Checkpointer(str(tmp_path), keep=3, save_every=1).restore_latest(target)
    assert step == 1
    np.testing.assert_array_equal(restored["w"], np.arange(32.0))
    assert restored["w"].sharding.mesh.devices.size == 1


def test_checkpoint_of_another_shape_is_a_clear_error(tmp_path):
    mesh = _mesh8()
    ckpt = Checkpointer(str(tmp_path), keep=3, save_every=1)
    ckpt.save(1, _tree(mesh))
    ckpt.close()
    target = _abstract({"w": jnp.zeros(64), "step": jnp.asarray(0, jnp.int32)})
    with pytest.raises(CheckpointShapeError, match="does not match this model"):
        Checkpointer(str(tmp_path), keep=3, save_every=1).restore_latest(target)


def test_mesh_errors_name_the_problem():
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.create_mesh({"data": 3, "fsdp": 2, "tensor": 1})
    with pytest.raises(ValueError, match="At most one"):
        sharding.create_mesh({"data": -1, "fsdp": -1, "tensor": 1})
    assert dict(sharding.create_mesh({"data": -1, "fsdp": 2, "tensor": 1}).shape) == {
        "data": 4, "fsdp": 2, "tensor": 1,
    }


class _CountingIterator:
    """A checkpointable stand-in for the grain iterator (bytes state, like grain's API)."""

    def __init__(self):
        self.i = 0

    def __next__(self):
        self.i += 1
        return {"image": np.full((8, 2), self.i, np.float32)}

    def get_state(self) -> bytes:
        return str(self.i).encode()

    def set_state(self, state: bytes) -> None:
        self.i = int(state.decode())

    def start_prefetch(self) -> None:
        pass


class _NaNAtStep3Task:
    """Loss turns NaN on the third step; the loop must stop before saving that state."""

    train_keys = eval_keys = ("image",)

    def init_state(self, rng):
        import flax.linen as nn

        from vq3d_jax.train.state import TrainState

        w = nn.LogicallyPartitioned(jnp.zeros((4,)), ("embed",))
        return TrainState(step=jnp.zeros((), jnp.int32), params={"w": w}, opt_state={}, rng=rng)

    def train_step(self, state, batch):
        loss = jnp.where(state.step >= 2, jnp.nan, jnp.mean(batch["image"]))
        return state.replace(step=state.step + 1, params={"w": state.params["w"] + 1}), {
            "loss/total": loss
        }


def test_nan_loss_stops_without_saving_the_bad_state(tmp_path):
    from vq3d_jax.train.loop import train
    from vq3d_jax.train.nonfinite import NonFiniteLossError
    from vq3d_jax.train.runtime import build_runtime

    config = tiny_task_config(data=8)
    config.update(total_steps=10, checkpoint_every=1, log_every=5)
    rt = build_runtime(_NaNAtStep3Task(), config)
    with pytest.raises(NonFiniteLossError, match="step 3"):
        train(rt, str(tmp_path), _CountingIterator())
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=3, save_every=1)
    assert ckpt.all_steps() == [1, 2]
    state, step = ckpt.restore_latest(rt.abstract_state, _CountingIterator())
    assert step == 2 and np.all(np.asarray(state.params["w"]) == 2.0)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines == []  # no log step was reached before the NaN


class _MeanTask(_NaNAtStep3Task):
    """Per-example metric = the first pixel; a 0 pixel yields NaN (a 'bad' example)."""

    def eval_step(self, state, batch):
        x = batch["image"][:, 0]
        return {"value": jnp.where(x == 0, jnp.nan, x)}


def test_eval_mean_masks_padding_and_non_finite_examples(tmp_path):
    from vq3d_jax.train.evaluation import run_eval
    from vq3d_jax.train.runtime import build_runtime, init_state
    from vq3d_jax.train.writer import MetricWriter

    config = tiny_task_config(data=8)
    rt = build_runtime(_MeanTask(), config)
    values = np.array([1, 2, 3, 0, 5, 6, 7, 8, 9, 10, 99, 99, 99, 99, 99, 99], np.float32)
    mask = np.array([True] * 10 + [False] * 6)  # the last six are padding
    batches = [
        {"image": np.repeat(values[i : i + 8, None], 2, 1), "mask": mask[i : i + 8]}
        for i in (0, 8)
    ]
    results = run_eval(rt, init_state(rt), batches, MetricWriter(str(tmp_path), enabled=False), 0)
    # Mean of the 9 real, finite values (the 0 → NaN one and the padding are left out).
    np.testing.assert_allclose(results["eval/value"], np.mean([1, 2, 3, 5, 6, 7, 8, 9, 10]))


class _CountingFID:
    """Stands in for the FID evaluator: 'scores' the number of real eval examples seen."""

    def begin(self):
        seen = []

        class Pass:
            def add(self, state, batch):
                seen.append(int(np.sum(np.asarray(batch["mask"]))))

            def finish(self):
                return {"fid": float(sum(seen))}

        return Pass()


def test_a_task_scored_by_fid_alone_evaluates_with_fid_and_says_so_without(tmp_path):
    """A task without per-example metrics (no eval_step, a GAN) gets FID from run_eval and,
    with FID off, an error that names the missing weights instead of 'no batches'."""
    from vq3d_jax.train.evaluation import run_eval
    from vq3d_jax.train.runtime import build_runtime, init_state
    from vq3d_jax.train.task import PerExampleMetrics
    from vq3d_jax.train.writer import MetricWriter

    task = _NaNAtStep3Task()  # train/sample only
    assert not isinstance(task, PerExampleMetrics)
    rt = build_runtime(task, tiny_task_config(data=8))
    mask = np.array([True] * 5 + [False] * 3)
    batches = [{"image": np.ones((8, 2), np.float32), "mask": mask}] * 2
    writer = MetricWriter(str(tmp_path), enabled=False)
    results = run_eval(rt, init_state(rt), batches, writer, 0, fid=_CountingFID())
    assert results == {"eval/fid": 10.0}
    with pytest.raises(ValueError, match="FID/SWD alone.*inception_weights"):
        run_eval(rt, init_state(rt), batches, writer, 0)


def test_a_reader_never_touches_a_live_runs_checkpoints(tmp_path):
    """Eval/sample/stage 2 open another run's checkpoints read-only: a save in progress
    there (its *.orbax-checkpoint-tmp folder) survives, and nothing is created."""
    live = tmp_path / "checkpoints"
    writer = Checkpointer(str(live), keep=3, save_every=1)
    writer.save(1, {"w": jnp.arange(4.0)})
    writer.close()
    in_progress = live / "2.orbax-checkpoint-tmp"
    in_progress.mkdir()
    reader = Checkpointer(str(live), keep=3, save_every=1, read_only=True)
    restored, step = reader.restore_latest({"w": jax.ShapeDtypeStruct((4,), jnp.float32,
                                                                      sharding=_replicated())})
    reader.close()
    assert step == 1 and in_progress.exists()
    np.testing.assert_array_equal(restored["w"], np.arange(4.0))
    absent = tmp_path / "absent"
    reader = Checkpointer(str(absent), keep=3, save_every=1, read_only=True)
    assert reader.restore_latest({}) is None and not absent.exists()
    reader.close()


def _replicated():
    return jax.sharding.NamedSharding(jax.make_mesh((1,), ("x",), devices=jax.devices()[:1]),
                                      jax.sharding.PartitionSpec())
