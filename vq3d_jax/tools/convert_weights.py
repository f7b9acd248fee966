r"""Converts the public PyTorch weights of the FID Inception and LPIPS into our `.npz` format.

  python -m vq3d_jax.tools.convert_weights inception pt_inception-2015-12-05-6726825d.pth \
      weights/inception_fid.npz
  python -m vq3d_jax.tools.convert_weights lpips vgg16-397923af.pth vgg.pth weights/lpips_vgg.npz

Then pass `--config.eval.fid.inception_weights=weights/inception_fid.npz` or
`--config.loss.lpips_weights=weights/lpips_vgg.npz`.

Reading a `.pth` needs PyTorch (the CPU wheel is enough: `pip install torch`);
only this converter uses it, the library does not. The output records the
source files' names and SHA-256 (printed too); the file names of the public
checkpoints carry the first 8 hex digits of their SHA-256 (torch hub's
convention), and a file whose digest disagrees is refused.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping

import numpy as np

from vq3d_jax.models import inception, lpips, pretrained


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """A `.pth` state dict → {name: float32 numpy array} (needs torch)."""
    try:
        import torch
    except ImportError as e:
        raise SystemExit(
            "Reading a PyTorch .pth needs torch, which the library itself does not "
            "require: `pip install torch` (the CPU wheel is enough), then run this again."
        ) from e
    if not os.path.exists(path):
        raise SystemExit(f"{path}: no such file.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise SystemExit(f"{path} holds a {type(state).__name__}, not a state dict.")
    return {
        name: value.detach().float().numpy()
        for name, value in state.items()
        if hasattr(value, "detach")
    }


def checked_sha256(path: str) -> str:
    """SHA-256 of `path`; refuses a file whose name carries a different digest prefix."""
    digest = pretrained.sha256_file(path)
    named = re.search(r"-([0-9a-f]{8})\.pth$", os.path.basename(path))
    if named and not digest.startswith(named.group(1)):
        raise SystemExit(
            f"{path}: its name says SHA-256 {named.group(1)}…, its content is {digest[:8]}…: "
            "a corrupt or different file. Download it again."
        )
    return digest


def convert_inception(state_dict, source: str, source_sha256: str, out: str) -> None:
    params = inception.params_from_torch(state_dict)
    pretrained.save(out, params, network=inception.SPEC.network, source_name=source,
                    source_sha256=source_sha256)


def convert_lpips(vgg_state_dict, lin_state_dict, sources: tuple[str, str],
                  digests: tuple[str, str], out: str) -> None:
    params = lpips.params_from_torch(vgg_state_dict, lin_state_dict)
    pretrained.save(out, params, network=lpips.SPEC.network, source_name="+".join(sources),
                    source_sha256="+".join(digests))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="network", required=True)
    inc = sub.add_parser("inception", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    inc.add_argument("source")
    inc.add_argument("out")
    lp = sub.add_parser("lpips", help="torchvision vgg16-397923af.pth + LPIPS v0.1 vgg.pth")
    lp.add_argument("vgg")
    lp.add_argument("lin")
    lp.add_argument("out")
    args = parser.parse_args(argv)
    if args.network == "inception":
        digest = checked_sha256(args.source)
        convert_inception(read_torch_state_dict(args.source), os.path.basename(args.source),
                          digest, args.out)
        inception.load_params(args.out)  # reads back what was written
        sources = {args.source: digest}
    else:
        digests = (checked_sha256(args.vgg), checked_sha256(args.lin))
        convert_lpips(read_torch_state_dict(args.vgg), read_torch_state_dict(args.lin),
                      (os.path.basename(args.vgg), os.path.basename(args.lin)), digests,
                      args.out)
        lpips.load_params(args.out)
        sources = dict(zip((args.vgg, args.lin), digests))
    for path, digest in sources.items():
        print(f"source {path}: sha256 {digest}")
    print(f"wrote {args.out}: sha256 {pretrained.sha256_file(args.out)}")


if __name__ == "__main__":
    main(sys.argv[1:])
