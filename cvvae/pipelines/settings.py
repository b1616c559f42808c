"""One clip to generate: :class:`GenerationSettings`, validated once, with defaults from the presets."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from ..errors import InputError
from ..tiling_settings import tiling_changes
from .backbones import MODES, backbones_for, get_backbone
from .defaults import LIMITS, MAX_GUIDANCE, MIN_GUIDANCE, MOTION_BUCKET_ID, NOISE_AUG_STRENGTH, VAE_CHOICES


@dataclass
class GenerationSettings:
    """One clip to generate. ``None`` means the preset's default for the chosen backbone.

    Ranges are ``cvvae.pipelines.defaults.LIMITS``. ``decode_tiling`` is a tiling choice for the
    decode (``"default"``, ``"off"``, ``"N"`` frames per window, ``"N/P"`` with P-pixel tiles), parsed once
    by :meth:`decode_tiling_changes` (what the pipelines take).
    """

    mode: str = "i2v"
    image: str | None = None
    prompt: str | None = None
    negative_prompt: str = ""
    t2v_backbone: str | None = None  # a text -> video backbone (animatediff, sd21, ...); None: the preset's
    num_latent_frames: int | None = None
    steps: int | None = None
    seed: int = 0
    fps: float | None = None  # output fps; the SVD UNet is conditioned on fps / 4 - 1
    conditioning_fps: float | None = None  # overrides that conditioning value
    motion_bucket_id: int = MOTION_BUCKET_ID
    min_guidance: float = MIN_GUIDANCE
    max_guidance: float = MAX_GUIDANCE
    guidance: float | None = None  # text guidance (AnimateDiff, SD 2.1, SD3); None: the backbone's
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
        t2v = backbones_for("t2v")
        _check(
            self.t2v_backbone in (None, *t2v),
            f"t2v_backbone must be one of {', '.join(t2v)}, got {self.t2v_backbone!r}",
        )
        _check(self.vae in VAE_CHOICES, f"vae must be one of {', '.join(VAE_CHOICES)}, got {self.vae!r}")
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
            if value is not None or name not in ("fps", "conditioning_fps", "guidance"):
                _check_number(name, value)
        _check(
            self.min_guidance <= self.max_guidance,
            f"min_guidance ({self.min_guidance}) must not exceed max_guidance ({self.max_guidance})",
        )
        self.decode_tiling_changes()  # InputError on a bad choice
        return self

    def decode_tiling_changes(self) -> dict:
        """``decode_tiling`` as changes to the decoding VAE's tiling (``cvvae.tiling.tiling_changes``)."""
        return tiling_changes(self.decode_tiling)

    def backbone(self, preset) -> str:
        """The preset's backbone for this mode; for text->video, ``t2v_backbone`` when set."""
        return (self.mode == "t2v" and self.t2v_backbone) or preset.backbone(self.mode)

    def resolved(self, preset) -> GenerationSettings:
        """A copy with every ``None`` default filled from ``preset`` (what the sidecar records)."""
        backbone = self.backbone(preset)
        d = preset.defaults(backbone)
        record = get_backbone(backbone)
        _check(record.mode == self.mode, f"backbone {backbone!r} does not do {self.mode}")
        most = record.max_latent_frames
        _check(
            not most or not isinstance(self.num_latent_frames, int) or self.num_latent_frames <= most,
            f"{record.label} takes at most {most} latent frames (its temporal layers hold {most} positions), "
            f"got num_latent_frames={self.num_latent_frames}",
        )
        return replace(
            self,
            t2v_backbone=backbone if self.mode == "t2v" else None,
            guidance=d.guidance if self.guidance is None else self.guidance,
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
