"""Load the released CV-VAE implementation (a local clone of https://github.com/AILab-CVC/CV-VAE) for
``benchmarks.vae_speed --tiling release-code``.

The clone's ``models/`` package is imported under a private name (``_cvvae_release_models_<hash of the
folder>``), so it neither shadows nor is shadowed by another package called ``models`` (nor by another
clone), and ``sys.path`` is left alone.
The release calls ``xformers.ops.memory_efficient_attention``; where xformers is not installed a small
stand-in mapping it to ``torch.nn.functional.scaled_dot_product_attention`` is in ``sys.modules`` while the
release is imported (its modules keep their reference to it afterwards).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

PACKAGE = "_cvvae_release_models"  # + "_" + a hash of the clone's folder
STAND_IN = "sdpa stand-in for xformers"


def check_repo(repo: Path) -> str | None:
    """Why ``repo`` is not a usable clone of the release, or None."""
    if not (Path(repo) / "models" / "modeling_vae.py").is_file():
        return f"{repo} is not a clone of the CV-VAE release: it has no models/modeling_vae.py"
    return None


def memory_efficient_attention(q, k, v, attn_bias=None, op=None, **_):
    """xformers' attention on SDPA. xformers lays 4-D inputs out as [B, M, H, K] (SDPA: [B, H, M, K]);
    3-D inputs [B, M, K] (all the release passes) are the same in both and go to SDPA as they are, as
    ours do (``cvvae.blocks.attention``), so both pick the same SDPA kernel."""
    if attn_bias is not None:
        raise NotImplementedError("the xformers stand-in supports attn_bias=None only")
    if q.dim() == 4:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


def xformers_stand_in() -> tuple[types.ModuleType, types.ModuleType]:
    xformers = types.ModuleType("xformers")
    xformers.__version__ = "0.0.28"
    xformers.__spec__ = importlib.machinery.ModuleSpec("xformers", None)
    ops = types.ModuleType("xformers.ops")
    ops.__spec__ = importlib.machinery.ModuleSpec("xformers.ops", None)
    ops.memory_efficient_attention = memory_efficient_attention
    xformers.ops = ops
    return xformers, ops


def release_class(repo: Path) -> tuple[type, str]:
    """The release's ``CVVAEModel`` class and the attention it runs (``xformers <version>`` or the stand-in)."""
    repo = Path(repo).resolve()
    name = f"{PACKAGE}_{hashlib.sha1(str(repo).encode()).hexdigest()[:10]}"
    package = sys.modules.get(name)
    if package is None:
        installed = []
        try:
            import xformers

            attention = f"xformers {xformers.__version__}"
        except ImportError:
            xformers, ops = xformers_stand_in()
            installed = [("xformers", xformers), ("xformers.ops", ops)]
            attention = STAND_IN
        for module_name, module in installed:
            sys.modules[module_name] = module
        try:
            spec = importlib.util.spec_from_file_location(
                name, repo / "models" / "__init__.py", submodule_search_locations=[str(repo / "models")]
            )
            package = importlib.util.module_from_spec(spec)
            package.attention = attention
            sys.modules[name] = package
            try:
                spec.loader.exec_module(package)
                importlib.import_module(name + ".modeling_vae")
            except BaseException:
                for loaded in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
                    del sys.modules[loaded]
                raise
        finally:
            for module_name, module in installed:  # the release's modules hold their own reference
                if sys.modules.get(module_name) is module:
                    del sys.modules[module_name]
    return sys.modules[name + ".modeling_vae"].CVVAEModel, package.attention


def takes(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


def build_release(repo: Path, ours: torch.nn.Module, small: bool = False) -> tuple[torch.nn.Module, str]:
    """The release's model with ``ours``' weights (the same state-dict keys, loaded strictly), in eval mode.

    Full size: the released config; ``small``: ``benchmarks.vae_speed``'s small model, which needs a
    release that takes ``norm_num_groups`` (check with ``takes`` first)."""
    cls, attention = release_class(repo)
    config = dict(
        ch=128,
        ch_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        decoder_attn_type="spatial-temporal-xformer",
        encoder_attn_type="vanilla-xformers",
    )
    if small:
        if not takes(cls, "norm_num_groups"):
            raise ValueError("the released CVVAEModel takes no norm_num_groups: it cannot build the small model")
        config.update(ch=32, ch_mult=[1, 1, 2, 2], norm_num_groups=8)
    model = cls(**config)
    model.load_state_dict(ours.state_dict(), strict=True)
    return model.eval(), attention
