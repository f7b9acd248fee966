"""FID in the eval loop: sharded features + streamed statistics equal a one-device reference;
the reference cache, user reference files, the converter and the weights errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vq3d_jax.metrics import evaluator
from vq3d_jax.models import inception, pretrained
from vq3d_jax.tools import convert_weights


def _random_torch_state_dict(seed=0):
    """pytorch-fid's tensors (names and shapes from the shipped list), random values.

    He-scaled convs and unit BN statistics keep the features O(1) through 94 convs.
    """
    with open(os.path.join(os.path.dirname(__file__), "data",
                           "pytorch_fid_inception_tensors.json")) as f:
        tensors = json.load(f)["tensors"]
    rng = np.random.default_rng(seed)
    state = {}
    for t in tensors:
        shape = tuple(t["shape"])
        if t["name"].endswith("conv.weight"):
            value = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        elif t["name"].endswith(("running_var", "bn.weight")):
            value = np.ones(shape)
        elif t["name"].startswith("fc."):
            value = rng.normal(0, 0.05, shape)
        else:
            value = np.zeros(shape)
        state[t["name"]] = value.astype(np.float32)
    return state


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("weights") / "inception_fid.npz")
    convert_weights.convert_inception(_random_torch_state_dict(), "random.pth", "0" * 64, path)
    return path


def test_converter_round_trips_a_state_dict(inception_weights):
    state = _random_torch_state_dict()
    params = traverse_util.flatten_dict(inception.load_params(inception_weights), sep="/")
    np.testing.assert_array_equal(
        params["Mixed_6b/branch7x7_2/conv/kernel"],
        state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["fc/kernel"], state["fc.weight"].T)
    assert pretrained.read_meta(inception_weights)["network"] == "inception_fid"


def test_weights_errors_name_the_file_command_and_key(tmp_path, inception_weights):
    with pytest.raises(pretrained.MissingWeightsError) as e:
        inception.load_params(str(tmp_path / "absent.npz"), evaluator.WEIGHTS_KEY)
    message = str(e.value)
    for needle in ("pt_inception-2015-12-05-6726825d.pth", "convert_weights inception",
                   "eval.fid.inception_weights"):
        assert needle in message
    foreign = str(tmp_path / "foreign.npz")
    pretrained.save(foreign, {"w": np.zeros(3)}, network="lpips_vgg", source_name="x",
                    source_sha256="0")
    with pytest.raises(pretrained.WeightsError, match="lpips_vgg"):
        inception.load_params(foreign)
    bad = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    bad.write_bytes(b"not the weights")
    with pytest.raises(SystemExit, match="corrupt or different"):
        convert_weights.checked_sha256(str(bad))


def test_user_reference_files(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(50, 2048))
    np.savez(tmp_path / "raw.npz", activations=feats)
    ref = evaluator.load_reference(str(tmp_path / "raw.npz"))
    np.testing.assert_allclose(ref["sigma"], np.cov(feats, rowvar=False), atol=1e-10)
    np.savez(tmp_path / "stats.npz", mu=ref["mu"], sigma=ref["sigma"])
    assert evaluator.load_reference(str(tmp_path / "stats.npz"))["features"] is None
    np.savez(tmp_path / "junk.npz", images=np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="mu"):
        evaluator.load_reference(str(tmp_path / "junk.npz"))


class _InvertTask:
    """A stand-in task: its 'reconstructions' are the inverted images."""

    train_keys = eval_keys = ("image",)
    fid_images_are = "inverted images"

    def init_state(self, rng):
        from vq3d_jax.train.state import TrainState

        return TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state={}, rng=rng)

    def eval_step(self, state, batch):
        return {"mean": jnp.mean(batch["image"].astype(jnp.float32), axis=(1, 2, 3))}

    def fid_images(self, state, batch):
        return 255 - batch["image"]


def test_sharded_fid_statistics_equal_single_device_reference(tmp_path, inception_weights):
    """8 simulated devices, a batch with 3 padding rows: the streamed statistics of the
    real and the task's images equal numpy's over the 5 real rows on one device."""
    from conftest import tiny_task_config

    from vq3d_jax.train import sharding
    from vq3d_jax.train.runtime import build_runtime, init_state

    config = tiny_task_config(data=8)
    config.eval.fid.update(inception_weights=inception_weights, cache_dir=str(tmp_path),
                           kid_subset_size=4, kid_subsets=3)
    rt = build_runtime(_InvertTask(), config)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (8, 24, 24, 3), dtype=np.uint8)
    mask = np.arange(8) < 5
    images[~mask] = 0
    ev = evaluator.from_config(config, rt, num_examples=5)
    fid_pass = ev.begin()
    with rt.scope():
        fid_pass.add(init_state(rt), sharding.global_batch({"image": images, "mask": mask},
                                                           rt.mesh))
    params = inception.load_params(inception_weights)
    both = np.concatenate([images[mask], 255 - images[mask]])
    # One device, one jit (eager, the 94 convs compiled one by one took 20 s).
    one_device = jax.jit(lambda x: inception.InceptionV3FID().apply({"params": params}, x))
    pools = np.asarray(one_device(both)["pool"], np.float64)
    for stats, want in ((fid_pass.real, pools[:5]), (fid_pass.generated, pools[5:])):
        mu, cov = stats.mean_cov()
        assert stats.n == 5
        np.testing.assert_allclose(mu, want.mean(0), rtol=1e-4, atol=1e-5 * np.abs(want).max())
        np.testing.assert_allclose(cov, np.cov(want, rowvar=False), rtol=1e-3,
                                   atol=1e-5 * np.abs(want).max() ** 2)
    scores = fid_pass.finish()
    assert scores["fid_num_examples"] == 5 and np.isfinite(scores["fid"])
    assert np.isfinite(scores["kid"])

    # The split's statistics were cached; the next evaluator reads them, no real pass.
    with np.load(ev.cache_path()) as data:
        np.testing.assert_allclose(data["mu"], fid_pass.real.mean_cov()[0])
    assert evaluator.from_config(config, rt, num_examples=5).begin().real is None


class _RecordingFID:
    """Duck-types FIDEvaluator: records what the eval loop hands it."""

    def __init__(self):
        self.batches = 0

    def begin(self):
        return self

    def add(self, state, batch):
        assert {"image", "mask"} <= set(batch)
        self.batches += 1

    def finish(self):
        return {"fid": 1.5}


def test_eval_loop_runs_fid_in_the_same_pass(tmp_path):
    from conftest import tiny_task_config

    from vq3d_jax.train.evaluation import run_eval
    from vq3d_jax.train.runtime import build_runtime, init_state
    from vq3d_jax.train.writer import MetricWriter

    config = tiny_task_config(data=8)
    rt = build_runtime(_InvertTask(), config)
    images = np.zeros((16, 8, 8, 3), np.uint8)
    batches = [{"image": images[i:i + 8], "mask": np.ones(8, bool)} for i in (0, 8)]
    recorder = _RecordingFID()
    results = run_eval(rt, init_state(rt), batches, MetricWriter(str(tmp_path), enabled=False),
                       0, recorder)
    assert recorder.batches == 2 and results["eval/fid"] == 1.5


def test_no_weights_turns_fid_off_with_the_reason(caplog):
    from conftest import tiny_task_config

    config = tiny_task_config(data=8)
    assert evaluator.from_config(config, runtime=None, num_examples=16) is None
    assert "eval.fid.inception_weights" in caplog.text


def test_reading_a_pth_without_torch_says_how_to_get_it(tmp_path):
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed here")
    except ImportError:
        pass
    with pytest.raises(SystemExit, match="pip install torch"):
        convert_weights.read_torch_state_dict(str(tmp_path / "x.pth"))


class _CopyTask(_InvertTask):
    """Its images are the real ones: SWD 0."""

    def fid_images(self, state, batch):
        return batch["image"]


def test_swd_runs_in_the_eval_pass_without_inception_weights(tmp_path):
    """eval.swd.num_images > 0: the eval pass adds SWD of the task's images against the
    split's (padding left out), 0 when they are the real images, large when inverted."""
    from conftest import tiny_task_config

    from vq3d_jax.metrics import swd
    from vq3d_jax.train.evaluation import run_eval
    from vq3d_jax.train.runtime import build_runtime, init_state
    from vq3d_jax.train.writer import MetricWriter

    config = tiny_task_config(data=8)
    config.eval.swd.num_images = 12
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    mask = np.arange(16) < 14  # two padding rows
    batches = [{"image": images[i:i + 8], "mask": mask[i:i + 8]} for i in (0, 8)]
    writer = MetricWriter(str(tmp_path), enabled=False)
    scores = {}
    for task in (_CopyTask(), _InvertTask()):
        rt = build_runtime(task, config)
        metrics = evaluator.from_config(config, rt, num_examples=14)
        scores[type(task)] = run_eval(rt, init_state(rt), batches, writer, 0, metrics)
    copy, invert = scores[_CopyTask], scores[_InvertTask]
    assert copy["eval/swd_avg"] == 0.0 and copy["eval/swd_num_examples"] == 12
    expected = swd.swd(images[:12], 255 - images[:12])
    np.testing.assert_allclose(invert["eval/swd_avg"], expected["swd_avg"], rtol=1e-5)
