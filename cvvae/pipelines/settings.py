"""One clip to generate: :class:`GenerationSettings`, validated once, with defaults from the presets."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from ..errors import InputError
from ..tiling import tiling_changes
from .decoding import VAE_CHOICES
from .defaults import LIMITS, MAX_GUIDANCE, MIN_GUIDANCE, MOTION_BUCKET_ID, NOISE_AUG_STRENGTH, TEXT_GUIDANCE

MODES = ("i2v", "t2v", "t2i")  # t2i: SD3 text -> image, decoded by CV-VAE-SD3
T2V_BACKBONES = ("animatediff", "sd21")  # sd21: text -> image (SD 2.1) -> video (SVD)


@dataclass
class GenerationSettings:
    """One clip to generate. ``None`` means the preset's default for the chosen backbone.

    Ranges are ``cvvae.pipelines.defaults.LIMITS``. ``decode_tiling`` is a tiling choice for the
    CV-VAE decode (``"default"``, ``"off"``, ``"N"`` frames per window, ``"N/P"`` with P-pixel tiles).
    """

    mode: str = "i2v"
    image: str | None = None
    prompt: str | None = None
    negative_prompt: str = ""
    t2v_backbone: str | None = None  # "animatediff" | "sd21"; None: the preset's
    num_latent_frames: int | None = None
    steps: int | None = None
    seed: int = 0
    fps: float | None = None  # output fps; the SVD UNet is conditioned on fps / 4 - 1
    conditioning_fps: float | None = None  # overrides that conditioning value
    motion_bucket_id: int = MOTION_BUCKET_ID
    min_guidance: float = MIN_GUIDANCE
    max_guidance: float = MAX_GUIDANCE
    guidance: float = TEXT_GUIDANCE  # text guidance (AnimateDiff, SD 2.1)
    noise_aug_strength: float = NOISE_AUG_STRENGTH
    height: int | None = None
    width: int | None = None
    adapter: str | None = None
    vae: str = "cvvae"
    decode_tiling: str = "default"

    def validate(self) -> GenerationSettings:
        """Raise InputError on any value that cannot work; returns self."""
        _check(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "i2v":
            _check(isinstance(self.image, str) and bool(self.image), "image-to-video needs an image (--image)")
        else:
            what = "text-to-image" if self.mode == "t2i" else "text-to-video"
            _check(isinstance(self.prompt, str) and bool(self.prompt.strip()), f"{what} needs a non-empty prompt")
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name)
            _check(
                text is None or (isinstance(text, str) and len(text) <= MAX_PROMPT_CHARS),
                f"{name} must be text of at most {MAX_PROMPT_CHARS} characters (the text encoders read 77 tokens)",
            )
        if self.mode == "t2v" and self.t2v_backbone == "animatediff" and isinstance(self.num_latent_frames, int):
            _check(
                self.num_latent_frames <= ANIMATEDIFF_MAX_LATENTS,
                f"AnimateDiff's motion module holds {ANIMATEDIFF_MAX_LATENTS} positions: num_latent_frames must be "
                f"at most {ANIMATEDIFF_MAX_LATENTS}, got {self.num_latent_frames}",
            )
        _check(
            self.t2v_backbone in (None, *T2V_BACKBONES),
            f"t2v_backbone must be animatediff or sd21, got {self.t2v_backbone!r}",
        )
        _check(self.vae in VAE_CHOICES, f"vae must be 'cvvae' or 'native', got {self.vae!r}")
        if self.mode == "t2i":
            _check(self.num_latent_frames in (None, 1), "text -> image makes one frame: leave num_latent_frames unset")
        for name in ("num_latent_frames", "steps", "seed", "motion_bucket_id", "height", "width"):
            value = getattr(self, name)
            if name == "num_latent_frames" and self.mode == "t2i":
                continue
            if value is not None or name in ("seed", "motion_bucket_id"):
                _check_int(name, value)
        for name in ("fps", "conditioning_fps", "min_guidance", "max_guidance", "guidance", "noise_aug_strength"):
            value = getattr(self, name)
            if value is not None or name not in ("fps", "conditioning_fps"):
                _check_number(name, value)
        _check(
            self.min_guidance <= self.max_guidance,
            f"min_guidance ({self.min_guidance}) must not exceed max_guidance ({self.max_guidance})",
        )
        tiling_changes(self.decode_tiling)  # InputError on a bad choice
        return self

    def backbone(self, preset) -> str:
        """``svd`` for image->video, ``sd3`` for text->image, else the text->video backbone (this setting
        or the preset's)."""
        return {"i2v": "svd", "t2i": "sd3"}.get(self.mode) or self.t2v_backbone or preset.t2v_backbone

    def resolved(self, preset) -> GenerationSettings:
        """A copy with every ``None`` default filled from ``preset`` (what the sidecar records)."""
        backbone = self.backbone(preset)
        d = preset.defaults(backbone)
        return replace(
            self,
            t2v_backbone=backbone if self.mode == "t2v" else None,
            num_latent_frames=self.num_latent_frames or d.num_latent_frames,
            steps=self.steps or d.steps,
            fps=None if self.mode == "t2i" else float(self.fps or d.fps),
            height=self.height or d.height,
            width=self.width or d.width,
        )

    @classmethod
    def from_dict(cls, data: dict) -> GenerationSettings:
        """Build from a dict (a batch job); InputError names unknown keys."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**data)


MAX_PROMPT_CHARS = 4000
ANIMATEDIFF_MAX_LATENTS = 32


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def _check_int(name: str, value) -> None:
    r = LIMITS[name]
    ok = isinstance(value, int) and not isinstance(value, bool) and value in r
    what = "an integer"
    if name in ("height", "width"):
        ok, what = ok and value % r.step == 0, f"a multiple of {r.step:g}"
    hint = " (n latents give 1 + 4(n-1) frames)" if name == "num_latent_frames" else ""
    _check(ok, f"{name} must be {what} in {r.low:g}..{r.high:g}{hint}, got {value!r}")


def _check_number(name: str, value) -> None:
    r = LIMITS[name]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    _check(ok and value in r, f"{name} must be a number in {r.low:g}..{r.high:g}, got {value!r}")
