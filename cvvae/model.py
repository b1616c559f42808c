"""``CVVAEModel``: the CV-VAE 3-D video VAE (SD 2.1 / SVD-compatible latents).

Checkpoint-compatible with the released ``AILab-CVC/CV-VAE`` weights (``vae3d``, ``vae3d_v1-1``).
Videos are ``[B, 3, T, H, W]`` in [-1, 1] (images ``[B, 3, H, W]``); latents are raw (no scaling
inside: ``config.scaling_factor`` belongs at a diffusion model's boundary) and have
``1 + (T - 1) // 4`` frames of ``H / 8 x W / 8``.

Inputs whose length is not ``1 + 4k`` or whose size is not a multiple of 8 are padded (last
frame repeated, edge pixels replicated) instead of silently cropped: their latents cover the
padded clip, and ``forward`` trims the reconstruction back to the input's frames and size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch.nn import functional as F

from .errors import InputError, ModelLoadError
from .frames import PaddedFrames, latent_frames, padded_length, tensor_to_frames, video_frames
from .hub import PICKLE_SUFFIXES, cache_first, check_local_weights, hub_error, looks_local
from .networks import Decoder, Encoder
from .networks_sd3 import DecoderSD3, EncoderSD3
from .tiling import TilingSettings, tiled_decode, tiled_encode

TilingLike = TilingSettings | dict | None
SD3_SCALING_FACTOR, SD3_SHIFT_FACTOR = 1.5305, 0.0609  # SD3's image VAE (and so its transformer's) latent convention


class CVVAEPosterior(DiagonalGaussianDistribution):
    """Diagonal Gaussian over the latent moments; ``kl`` sums over every non-batch dim (5-D safe)."""

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        dims = list(range(1, self.mean.dim()))
        if self.deterministic:
            return self.mean.new_zeros(self.mean.shape[0])
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )


class _CVVAEFamily(ModelMixin, ConfigMixin):
    """What both CV-VAE variants share: shapes and padding, tiling, the posterior, encode/decode, loading.

    Subclasses build ``self.encoder``/``self.decoder`` (networks with ``high``/``low`` stages) and set
    ``self.tiling`` from their config; ``latent_channels`` and ``video_channels`` name their sizes.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = True
    temporal_factor, spatial_factor = 4, 8  # video frames per latent frame, pixels per latent pixel (both variants)
    latent_channels: int
    video_channels: int = 3

    # ----------------------------------------------------------------------------- tiling

    def enable_tiling(self, **changes) -> None:
        """Process long/large clips in overlapping windows and tiles (see ``cvvae.tiling``).

        Settings not named keep their value (``frames_per_window``, ``tile_size``, ``overlap``,
        ``temporal_overlap``, ``norm``); the defaults come from ``config.json``.
        """
        self.tiling = self.tiling.replace(enabled=True, **changes)

    def disable_tiling(self) -> None:
        """Process every clip whole (fastest; memory grows with frames and size); settings are kept."""
        self.tiling = self.tiling.replace(enabled=False)

    @contextlib.contextmanager
    def tiling_override(self, **changes) -> Iterator[TilingSettings]:
        """Change tiling inside a ``with`` block only (``enabled=False`` for whole clips).

        For concurrent callers sharing one model, pass ``tiling=`` to ``encode``/``decode`` instead.
        """
        saved = self.tiling
        self.tiling = saved.replace(**changes)
        try:
            yield self.tiling
        finally:
            self.tiling = saved

    def _tiling(self, tiling: TilingLike) -> TilingSettings:
        """The settings of one call: the model's, a ``TilingSettings``, or changes to the model's."""
        if tiling is None:
            return self.tiling
        return tiling if isinstance(tiling, TilingSettings) else self.tiling.replace(**tiling)

    # ----------------------------------------------------------------------------- shapes

    def _as_video(self, x: torch.Tensor, what: str, channels: int, frames: int | None) -> tuple[torch.Tensor, bool]:
        """Accept ``[B, C, T, H, W]`` or ``[B, C, H, W]`` (``(B T)`` folded when ``frames`` is set)."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise InputError(f"{what} must be a floating-point tensor, got {type(x).__name__}")
        if x.dim() == 4:
            if frames:
                if x.shape[0] % frames:
                    raise InputError(f"{what} of {x.shape[0]} images cannot be split into clips of {frames} frames")
                return x.reshape(-1, frames, *x.shape[1:]).transpose(1, 2), True
            return x.unsqueeze(2), True
        if x.dim() != 5:
            raise InputError(f"{what} must be [B, C, T, H, W] or [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != channels:
            raise InputError(
                f"{what} must have {channels} channels in dim 1 (layout [B, C, T, H, W]), got {tuple(x.shape)}"
            )
        if 0 in x.shape:
            raise InputError(f"{what} is empty: shape {tuple(x.shape)}")
        return x, False

    @staticmethod
    def _pad(x: torch.Tensor) -> torch.Tensor:
        """Repeat the last frame up to ``1 + 4k`` frames and edge pixels up to multiples of 8."""
        t, h, w = x.shape[2:]
        t_pad, h_pad, w_pad = padded_length(t) - t, -h % 8, -w % 8
        if t_pad:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, t_pad, -1, -1)], dim=2)
        if h_pad or w_pad:
            x = F.pad(x, (0, w_pad, 0, h_pad, 0, 0), mode="replicate")
        return x

    # ----------------------------------------------------------------------------- encode / decode

    def _moments(self, x: torch.Tensor | PaddedFrames, tiling: TilingLike) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` (padded here) or ``PaddedFrames`` -> moments
        ``[B, 2 z, 1 + (T' - 1) // 4, H' / 8, W' / 8]`` of the padded sizes."""
        moments_channels = self.latent_channels * (2 if self.config.double_z else 1)
        x = x if isinstance(x, PaddedFrames) else self._pad(x)
        return tiled_encode(self.encoder, x, self._tiling(tiling), moments_channels)

    def _posterior(self, moments: torch.Tensor) -> CVVAEPosterior:
        """Mean | logvar moments; without ``double_z`` the encoder gives only the mean (deterministic)."""
        if self.config.double_z:
            return CVVAEPosterior(moments)
        return CVVAEPosterior(torch.cat([moments, torch.zeros_like(moments)], dim=1), deterministic=True)

    @apply_forward_hook
    def encode(
        self, x: torch.Tensor, return_dict: bool = True, tiling: TilingLike = None
    ) -> AutoencoderKLOutput | tuple[CVVAEPosterior]:
        """Encode a video ``[B, 3, T, H, W]`` (or images ``[B, 3, H, W]``) in [-1, 1].

        Returns the posterior over raw latents ``[B, C, 1 + (T' - 1) // 4, H' / 8, W' / 8]`` where
        ``T'``, ``H'``, ``W'`` are the input's sizes padded to ``1 + 4k`` and multiples of 8 (with
        ``reshape_z_dim_to_4`` in the config: ``[(B n), 4, h, w]``). ``tiling`` overrides the
        model's tiling for this call (a ``TilingSettings`` or a dict of changes).
        With ``double_z=False`` the posterior is deterministic (its samples are its mean).
        """
        x, _ = self._as_video(x, "encode input", self.config.in_channels, self.config.num_video_frames)
        moments = self._moments(x, tiling)
        if self.config.reshape_z_dim_to_4:
            moments = moments.transpose(1, 2).flatten(0, 1)  # (B, C, n, h, w) -> ((B n), C, h, w)
        posterior = self._posterior(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    @apply_forward_hook
    def decode(
        self, z: torch.Tensor, num_frames: int | None = None, return_dict: bool = True, tiling: TilingLike = None
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Decode raw latents ``[B, C, n, h, w]`` into ``[B, 3, 1 + 4 (n - 1), 8 h, 8 w]``.

        A 4-D latent ``[(B n), 4, h, w]`` is split into clips of ``num_frames`` latent frames
        (or the configured ``num_video_frames``' latent count, else one frame each).
        """
        frames = num_frames
        if frames is None and self.config.num_video_frames:
            frames = latent_frames(self.config.num_video_frames)
        z, _ = self._as_video(z, "decode input", self.latent_channels, frames)
        x = tiled_decode(self.decoder, z, self._tiling(tiling), self.video_channels)
        if self.config.reshape_x_dim_to_4:
            x = x.transpose(1, 2).flatten(0, 1)  # (B, C, T, H, W) -> ((B T), C, H, W)
        return DecoderOutput(sample=x) if return_dict else (x,)

    @apply_forward_hook
    def encode_frames(self, frames: np.ndarray, tiling: TilingLike = None) -> CVVAEPosterior:
        """uint8 frames ``[T, H, W, 3]`` -> the posterior over raw latents ``[1, C, n, h, w]`` of the padded
        clip, as ``encode`` gives for ``frames_to_tensor(frames)``; tiled, the frames are converted to
        floating point box by box, never the whole clip at once."""
        return self._posterior(self._moments(PaddedFrames(frames, self.device, self.dtype), tiling))

    @apply_forward_hook
    def decode_frames(
        self, z: torch.Tensor, size: tuple[int, int, int] | None = None, tiling: TilingLike = None
    ) -> np.ndarray:
        """Raw latents ``[1, C, n, h, w]`` -> uint8 frames ``[T, H, W, 3]`` trimmed to ``size`` (T, H, W; default:
        all that the latents decode to). Tiled, each window's frames become 8-bit as soon as they are
        final, so no floating-point copy of the whole clip is made."""
        n, h8, w8 = z.shape[2:]
        t, h, w = size or (video_frames(n), 8 * h8, 8 * w8)
        out = np.empty((t, h, w, 3), np.uint8)
        done = 0

        def keep(part: torch.Tensor) -> None:  # part: [1, 3, frames, H', W'] of final frames, in order
            nonlocal done
            part = part[:, :, : t - done, :h, :w]
            out[done : done + part.shape[2]] = tensor_to_frames(part)
            done += part.shape[2]

        tiled_decode(self.decoder, z, self._tiling(tiling), self.video_channels, sink=keep)
        return out

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        tiling: TilingLike = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Reconstruct ``sample``, trimmed back to its own frames and size."""
        video, was_4d = self._as_video(sample, "input", self.config.in_channels, self.config.num_video_frames)
        posterior = self._posterior(self._moments(video, tiling))
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        x = tiled_decode(self.decoder, z, self._tiling(tiling), self.video_channels)
        t, h, w = video.shape[2:]
        x = x[:, :, :t, :h, :w]
        if was_4d:
            x = x.transpose(1, 2).flatten(0, 1)  # (B, C, T, H, W) -> ((B T), C, H, W)
        return DecoderOutput(sample=x) if return_dict else (x,)

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args, allow_pickle: bool = False, **kwargs):
        """Load released or saved weights **strictly** (every key present, same shapes).

        ``pretrained_model_name_or_path`` is a local folder or a hub id (``AILab-CVC/CV-VAE`` with
        ``subfolder="vae3d_v1-1"`` or ``"vae3d"``). Config keys passed as keyword arguments
        override ``config.json`` (e.g. ``tile_spatial_size=None``). Pickle checkpoints (``.ckpt``,
        ``.bin``) can run arbitrary code when loaded and are refused unless ``allow_pickle=True``.
        """
        path = Path(pretrained_model_name_or_path)
        if path.suffix in PICKLE_SUFFIXES or path.suffix == ".safetensors":
            raise ModelLoadError(
                f"{path} is a weights file; pass the folder that holds it together with its config.json"
            )
        if path.exists():
            check_local_weights(path / (kwargs.get("subfolder") or ""), allow_pickle)
        elif looks_local(pretrained_model_name_or_path):
            raise ModelLoadError(f"model folder {pretrained_model_name_or_path} does not exist: check the path")
        kwargs.setdefault("use_safetensors", None if allow_pickle else True)
        kwargs["output_loading_info"] = True
        parent = super().from_pretrained

        def load(name, **kw):
            return parent(name, *args, **kw)

        try:
            if path.exists() or kwargs.get("local_files_only"):
                model, info = load(pretrained_model_name_or_path, **kwargs)
            else:  # a hub id: the local cache first, the hub only if it answers
                model, info = cache_first(load, str(pretrained_model_name_or_path), **kwargs)
        except ModelLoadError:
            raise
        except OSError as err:
            raise hub_error(str(pretrained_model_name_or_path), kwargs.get("subfolder"), err) from err
        except (ValueError, RuntimeError) as err:  # tensors of the wrong shape, a corrupt file, a bad config
            first = str(err).split(". If you want")[0].splitlines()[0][:300]
            raise ModelLoadError(
                f"{pretrained_model_name_or_path} does not hold a CV-VAE matching its config.json ({first}); "
                "check the folder, the subfolder and the config"
            ) from err
        problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if problems:
            details = "; ".join(f"{k.replace('_', ' ')}: {sorted(map(str, v))[:5]}" for k, v in problems.items())
            raise ModelLoadError(
                f"{pretrained_model_name_or_path} does not hold a {cls.__name__} state dict matching its config.json "
                f"({details}); check the folder, the subfolder and the config"
            )
        return model


class CVVAEModel(_CVVAEFamily):
    """CV-VAE, SD 2.1 / SVD-compatible (4 latent channels), with the released ``config.json`` keys.

    The released runtime keys ``en_de_n_frames_a_time`` (frames per temporal window),
    ``tile_spatial_size`` (pixel tile size) and ``tile_overlap_ratio`` are the defaults of the
    tiling settings (``None`` disables an axis); change them with ``enable_tiling`` /
    ``disable_tiling`` or override them in ``from_pretrained(...)``. ``norm_num_groups`` is our
    one addition (default 32, as in the release) so tests can build tiny models.
    """

    @register_to_config
    def __init__(
        self,
        double_z: bool = True,
        z_channels: int = 4,
        in_channels: int = 3,
        out_ch: int = 3,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (),
        dropout: float = 0.0,
        use_3d_conv: bool = True,
        half_3d: bool = True,
        causal_encoder: bool = True,
        causal_decoder: bool = False,
        encoder_attn_type: str = "vanilla-xformers",
        decoder_attn_type: str = "spatial-temporal-xformer",
        scaling_factor: float = 0.18215,
        force_upcast: bool = True,
        en_de_n_frames_a_time: int | None = 16,
        time_n_compress: int = 4,
        spatial_n_compress: int = 8,
        tile_spatial_size: int | None = 576,
        num_video_frames: int | None = None,
        tile_overlap_ratio: float = 0.2222,
        reshape_z_dim_to_4: bool = False,
        reshape_x_dim_to_4: bool = False,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        if len(ch_mult) != 4 or time_n_compress != 4 or spatial_n_compress != 8:
            raise ValueError("CV-VAE has 4 levels (ch_mult of length 4): 4x temporal and 8x spatial compression")
        if attn_resolutions:
            raise ValueError(
                "attn_resolutions is not supported: the released model has attention in the mid block only"
            )
        if ch % norm_num_groups:
            raise ValueError(f"ch={ch} must be divisible by norm_num_groups={norm_num_groups}")
        common = dict(
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            groups=norm_num_groups,
            dropout=dropout,
            use_3d_conv=use_3d_conv,
            half_3d=half_3d,
        )
        self.encoder = Encoder(
            in_channels, z_channels, double_z=double_z, causal=causal_encoder, attn_type=encoder_attn_type, **common
        )
        self.decoder = Decoder(out_ch, z_channels, causal=causal_decoder, attn_type=decoder_attn_type, **common)
        self.tiling = TilingSettings(en_de_n_frames_a_time, tile_spatial_size, tile_overlap_ratio)
        self.latent_channels, self.video_channels = z_channels, out_ch


class CVVAESD3Model(_CVVAEFamily):
    """CV-VAE, SD3-compatible (16 latent channels), with the released ``config.json`` keys (diffusers-style:
    ``block_out_channels``, ``layers_per_block``, ``out_channels`` = latent channels).

    SD3's latent convention lives here, as config keys the released config lacks: a diffusion model works on
    ``(latent - shift_factor) * scaling_factor`` (SD3's 0.0609 and 1.5305; ``cvvae.latents``). Everything
    else (tiling, padding, the posterior, loading) is :class:`CVVAEModel`'s.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 16,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock3D",) * 4,
        up_block_types: tuple[str, ...] = ("UpDecoderBlock3D",) * 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        double_z: bool = True,
        mid_block_add_attention: bool = True,
        causal_encoder: bool = True,
        causal_decoder: bool = False,
        half_3d: bool = True,
        en_de_n_frames_a_time: int | None = 16,
        time_n_compress: int = 4,
        spatial_n_compress: int = 8,
        tile_spatial_size: int | None = 576,
        num_video_frames: int | None = None,
        tile_overlap_ratio: float = 0.2222,
        reshape_z_dim_to_4: bool = False,
        reshape_x_dim_to_4: bool = False,
        scaling_factor: float = SD3_SCALING_FACTOR,
        shift_factor: float = SD3_SHIFT_FACTOR,
    ) -> None:
        super().__init__()
        released = (
            len(block_out_channels) == 4 and time_n_compress == 4 and spatial_n_compress == 8 and act_fn == "silu"
        )
        if not released or not (mid_block_add_attention and causal_encoder and half_3d) or causal_decoder:
            raise ValueError(
                "CVVAESD3Model supports the released structure: 4 levels, causal encoder, silu, attention"
            )
        if any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(f"block_out_channels {block_out_channels} must be divisible by {norm_num_groups}")
        args = (block_out_channels, layers_per_block, norm_num_groups)
        self.encoder = EncoderSD3(in_channels, out_channels, *args)
        self.decoder = DecoderSD3(in_channels, out_channels, *args)
        self.tiling = TilingSettings(en_de_n_frames_a_time, tile_spatial_size, tile_overlap_ratio)
        self.latent_channels, self.video_channels = out_channels, in_channels


MODEL_CLASSES = {cls.__name__: cls for cls in (CVVAEModel, CVVAESD3Model)}
