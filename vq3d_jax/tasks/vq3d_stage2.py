"""VQ3D stage 2 (arXiv 2302.06833 §3.4): an autoregressive prior over frozen stage-1 codes.

The stage-1 run is named by its workdir (`stage1.workdir`): its `config.json`
rebuilds the stage-1 task and its newest checkpoint supplies the frozen
generator, which is copied into this run's state (`model_state['stage1']`) when
training starts, so stage-2 checkpoints are self-contained.

- Train: codes come precomputed (batches with `codes`, from a dataset written by
  `python -m vq3d_jax.main --mode=codes`) or from images through the frozen encoder.
  Loss: cross-entropy of the next code (logged as bits/token); labels are
  replaced by the null class with probability `prior.class_dropout`.
- Eval: bits/token of the eval split's codes; FID/KID/IS of *samples* drawn with
  the split's labels (one per real image) against the split's real images.
- Sample: codes drawn by the cached decode loop → stage-1 decoder → NeRF →
  canonical image, depth and an orbit per sample.

Without a stage-1 workdir (vocab and length given explicitly) the task trains
the prior on precomputed codes alone, e.g. for benchmarks; decoding pictures
then needs a stage-1 run and says so.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vq3d_jax.models import ar_prior
from vq3d_jax.tasks.common import (
    image_grid,
    images_to_float,
    make_optimizer,
    run_config,
)
from vq3d_jax.train import accumulation
from vq3d_jax.train.state import TrainState
from vq3d_jax.train.task import CodeAutoencoder, Pretrained

PRIOR = "prior"
STAGE1 = "stage1"


def load_stage1_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a stage-1 run was trained with (its workdir's config.json)."""
    config = run_config(workdir, "stage1.workdir", "a stage-1 run (python -m vq3d_jax.main "
                        "--config=configs/vq3d_stage1.py:tiny --workdir=DIR)")
    # Stage 2 never computes stage-1 losses: nothing of them needs loading.
    config.loss.lpips_weights = ""
    if "generator" not in config.optim:  # runs saved before per-network optimizer blocks
        flat = config.optim
        shared = {k: flat[k] for k in ("warmup_steps", "decay", "b1", "b2", "grad_clip")}
        config.optim = ml_collections.ConfigDict({
            "generator": {**shared, "learning_rate": flat.learning_rate,
                          "weight_decay": flat.weight_decay},
            "discriminator": {**shared, "learning_rate": flat.disc_learning_rate,
                              "weight_decay": 0.0},
        })
    return config


def decay_mask(params):
    """Weight decay on matrices (kernels, embeddings), not on biases or LayerNorms."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


class VQ3DStage2Task:
    num_sample_images = 8

    def __init__(self, config):
        from vq3d_jax.tasks import get_task  # the registry imports this module

        self.config = config
        p, o = config.prior, config.optim
        self.stage1_workdir = config.stage1.workdir
        self.stage1 = None
        vocab, length = int(p.vocab_size), int(p.length)
        if self.stage1_workdir:
            stage1_config = load_stage1_config(self.stage1_workdir)
            self.stage1 = get_task(stage1_config)
            if not isinstance(self.stage1, CodeAutoencoder):
                raise ValueError(
                    f"stage1.workdir={self.stage1_workdir!r} holds a {stage1_config.task!r} "
                    "run, which has no codes to model (train VQ3D stage 1 there).")
            m1 = stage1_config.model
            size = int(stage1_config.data.image_size)
            if size != int(config.data.image_size):
                raise ValueError(
                    f"data.image_size={config.data.image_size} but the stage-1 run at "
                    f"{self.stage1_workdir} was trained at {size}²: they must agree."
                )
            stage1_vocab, stage1_length = int(m1.codebook_size), (size // m1.patch_size) ** 2
            for name, given, known in (("vocab_size", vocab, stage1_vocab),
                                       ("length", length, stage1_length)):
                if given and given != known:
                    raise ValueError(f"prior.{name}={given}, but stage 1 has {known}.")
            vocab, length = stage1_vocab, stage1_length
        elif not (vocab and length):
            raise ValueError(
                "Set stage1.workdir to a stage-1 run (its codes, decoder and NeRF), or, to "
                "train on precomputed codes alone, prior.vocab_size and prior.length."
            )
        self.vocab_size, self.length = vocab, length
        self.num_classes = int(p.num_classes)
        dims = ar_prior.preset_dims(p.size)
        common = dict(vocab_size=vocab, num_classes=self.num_classes, length=length,
                      dtype=jnp.dtype(p.dtype), attention_impl=p.attention_impl or None)
        self.prior = ar_prior.build(dims, remat=bool(p.remat), **common)
        self.decoder = ar_prior.build(dims, **common)  # decode step: never remat
        self.dims = dims
        self.tx, self.lr = make_optimizer(o, config.total_steps, decay_mask=decay_mask)
        s = config.sample
        self.sampling = ar_prior.SamplingOptions(
            temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p),
            guidance_scale=float(s.guidance_scale), cache_segments=int(s.cache_segments))
        self.num_sample_images = int(s.num_images)
        self.codes_precomputed = bool(config.data.get("codes_dir", ""))
        if not (self.codes_precomputed or self.stage1):
            raise ValueError("Without stage1.workdir the codes must be precomputed "
                             "(data.codes_dir).")
        self.train_keys = ("codes", "label") if self.codes_precomputed else ("image", "label")
        self.eval_keys = ("image", "label", "index")
        # The FID evaluator's protocol line names what it scored.
        self.fid_images_are = "samples"

    # -- state -------------------------------------------------------------------------
    def init_state(self, rng: jax.Array) -> TrainState:
        prior_rng, stage1_rng, step_rng = jax.random.split(rng, 3)
        codes = jnp.zeros((1, self.length), jnp.int32)
        params = {PRIOR: self.prior.init(prior_rng, codes, jnp.zeros((1,), jnp.int32))["params"]}
        model_state = {}
        if self.stage1 is not None:
            # Zeros of the right shapes and logical axes; the loop fills them (`pretrained`)
            # (zeros, not a random init: that would compile the stage-1 init for nothing).
            size = int(self.config.data.image_size)
            images = jnp.zeros((1, size, size, 3), jnp.float32)
            shapes = jax.eval_shape(self.stage1.init_generator, stage1_rng, images)
            model_state[STAGE1] = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state={PRIOR: self.tx.init(params[PRIOR])},
            rng=step_rng,
            model_state=model_state,
        )

    def pretrained(self) -> list[Pretrained]:
        """The stage-1 generator (its EMA when it kept one) from the stage-1 run's newest
        checkpoint, into `model_state['stage1']` (the loop restores it after a fresh init)."""
        if self.stage1 is None:
            return []
        return [Pretrained(name=STAGE1, workdir=self.stage1_workdir, task=self.stage1,
                           select=self.stage1.inference_generator, into=("model_state", STAGE1))]

    # -- codes -------------------------------------------------------------------------
    def _stage1_params(self, state: TrainState):
        if self.stage1 is None:
            raise ValueError("Decoding or encoding codes needs stage1.workdir (a stage-1 run).")
        return state.model_state[STAGE1]

    def codes_of(self, state: TrainState, batch) -> jax.Array:
        """The batch's code sequences [B, L]: precomputed, or encoded by the frozen stage 1."""
        if "codes" in batch:
            if batch["codes"].shape[1:] != (self.length,):
                raise ValueError(f"Codes of shape {batch['codes'].shape[1:]}; the prior "
                                 f"models {self.length} codes per image.")
            return batch["codes"].astype(jnp.int32)
        g1 = jax.lax.stop_gradient(self._stage1_params(state))
        return self.stage1.encode_codes(g1, images_to_float(batch["image"]))

    def encode_step(self, state: TrainState, batch) -> dict:
        """What `--mode=codes` (tools/precompute_codes.py) stores per image: codes, label."""
        return {"codes": self.codes_of(state, batch), "label": batch["label"]}

    def class_labels(self, labels: jax.Array) -> jax.Array:
        """Dataset labels → prior classes; without classes (num_classes 0) all null."""
        labels = labels.astype(jnp.int32)
        valid = (labels >= 0) & (labels < self.num_classes)
        return jnp.where(valid, labels, self.num_classes)

    # -- training ----------------------------------------------------------------------
    def _token_losses(self, params, codes, labels):
        """Per-token cross-entropy (nats) and top-1 hits, [B, L] each."""
        logits = self.prior.apply({"params": params}, codes, labels)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, codes)
        hits = (jnp.argmax(logits, axis=-1) == codes).astype(jnp.float32)
        return ce, hits

    def train_step(self, state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        keys = accumulation.example_keys(rng, batch["label"].shape[0])

        def gradients(inputs):
            batch, keys = inputs
            codes = self.codes_of(state, batch)
            dropped = jax.vmap(lambda k: jax.random.bernoulli(
                k, self.config.prior.class_dropout))(keys)
            labels = jnp.where(dropped, self.num_classes, self.class_labels(batch["label"]))

            def loss_fn(params):
                ce, hits = self._token_losses(params, codes, labels)
                return jnp.mean(ce), jnp.mean(hits)

            (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params[PRIOR])
            return grads, {"loss/ce": loss, "train/accuracy": accuracy}, {}

        grads, means, _ = accumulation.mean_over_microbatches(
            gradients, (batch, keys),
            accumulation.steps_of(self.config))
        updates, opt_state = self.tx.update(grads, state.opt_state[PRIOR], state.params[PRIOR])
        params = optax.apply_updates(state.params[PRIOR], updates)
        new_state = state.replace(step=state.step + 1, params={PRIOR: params},
                                  opt_state={PRIOR: opt_state})
        return new_state, {
            **means,
            "train/bits_per_token": means["loss/ce"] / math.log(2.0),
            "train/learning_rate": self.lr(state.step),
            "train/grad_norm": optax.tree.norm(grads),
        }

    # -- evaluation and pictures -------------------------------------------------------
    def eval_step(self, state: TrainState, batch):
        """Bits/token and next-code accuracy of each eval image's codes, under its label."""
        ce, hits = self._token_losses(state.params[PRIOR], self.codes_of(state, batch),
                                      self.class_labels(batch["label"]))
        return {"bits_per_token": jnp.mean(ce, axis=1) / math.log(2.0),
                "accuracy": jnp.mean(hits, axis=1)}

    def sample_labels(self, batch) -> jax.Array:
        """Which class each sample is drawn for (config.sample.class_label)."""
        fixed = int(self.config.sample.class_label)
        if fixed == -1:  # the eval split's labels: its class distribution
            return self.class_labels(batch["label"])
        return jnp.full_like(batch["label"], fixed if fixed < self.num_classes else
                             self.num_classes).astype(jnp.int32)

    def sample_codes(self, state: TrainState, batch) -> jax.Array:
        """Codes drawn for each example; example i's draw depends only on (seed, index i)."""
        base = jax.random.key(int(self.config.sample.seed))
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, batch["index"])
        return ar_prior.sample_codes(self.decoder, state.params[PRIOR],
                                     self.sample_labels(batch), keys, self.sampling)

    def generate(self, state: TrainState, batch) -> dict:
        """Samples for each example of the batch: image, depth, orbit (uint8)."""
        codes = self.sample_codes(state, batch)
        return self.stage1.pictures_from_codes(self._stage1_params(state), codes)

    def fid_images(self, state: TrainState, batch):
        """What FID scores: one sample per eval image, under its label (generation FID)."""
        return self.generate(state, {k: batch[k] for k in ("label", "index")})["image"]

    def sample(self, state: TrainState, batch):
        """A grid (images over depths), and per sample an orbit GIF and a depth map."""
        n = min(self.num_sample_images, batch["label"].shape[0])
        out = self.generate(state, {k: batch[k][:n] for k in ("label", "index")})
        pictures = {"samples": image_grid([out[k] for k in ("image", "depth") if k in out])}
        for i in range(n):
            if "orbit" in out:
                pictures[f"orbit_{i:02d}"] = out["orbit"][i]
            if "depth" in out:
                pictures[f"depth_{i:02d}"] = out["depth"][i]
        return pictures
