"""Every default and range of generation, in one place: pipelines, presets, settings, the command line
and the web demo all read them from here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Defaults:
    """What a backbone generates when the user does not say: latents, size, steps, output fps."""

    num_latent_frames: int
    height: int
    width: int
    steps: int
    fps: float  # output fps: 4 x the backbone's own fps, so a clip lasts as long as the backbone's
    guidance: float = 7.5  # text guidance (AnimateDiff, SD 2.1, SD3)


SVD_XT = Defaults(25, 576, 1024, 25, 28.0)  # 25 latents -> 97 frames; fps id 28 / 4 - 1 = 6, SVD's default
SVD = Defaults(14, 576, 1024, 25, 28.0)  # 14 latents -> 53 frames
ANIMATEDIFF = Defaults(16, 512, 512, 25, 32.0)  # 16 latents -> 61 frames; AnimateDiff's 8 fps x 4
SD3 = Defaults(1, 1024, 1024, 28, 0.0, guidance=7.0)  # text -> image: one latent frame; SD3's guidance
NANO = Defaults(
    5, 64, 64, 25, 30.0
)  # the nano SVD: 5 latents -> 17 frames at 64x64; fps id 30 / 4 - 1 = 6.5, as trained
TINY_VIDEO = Defaults(3, 64, 64, 2, 28.0)  # the random 'tiny' preset: 3 latents -> 9 frames
TINY_TEXT = Defaults(3, 64, 64, 2, 32.0)
TINY_IMAGE = Defaults(1, 64, 64, 2, 0.0, guidance=7.0)

# SVD conditioning and guidance (diffusers' defaults for SVD)
MOTION_BUCKET_ID = 127
NOISE_AUG_STRENGTH = 0.02
MIN_GUIDANCE = 1.0
MAX_GUIDANCE = 3.0


VAE_CHOICES = ("cvvae", "native")  # decode with CV-VAE, or with the backbone's own VAE (for comparisons)


@dataclass(frozen=True)
class Range:
    """Inclusive bounds (and the step a slider uses) of one setting."""

    low: float
    high: float
    step: float = 1

    def __contains__(self, value) -> bool:
        return self.low <= value <= self.high


LIMITS = {
    "num_latent_frames": Range(2, 64),  # 64 latents = 253 frames; generation needs at least 2
    "steps": Range(1, 200),
    "seed": Range(0, 2**63 - 1),
    "fps": Range(1, 120),
    "conditioning_fps": Range(0, 60, 0.25),
    "motion_bucket_id": Range(0, 255),  # SVD's micro-conditioning range
    "min_guidance": Range(0, 20, 0.1),
    "max_guidance": Range(0, 20, 0.1),
    "guidance": Range(0, 20, 0.5),
    "noise_aug_strength": Range(0, 1, 0.01),
    "height": Range(64, 4096, 64),
    "width": Range(64, 4096, 64),
}
