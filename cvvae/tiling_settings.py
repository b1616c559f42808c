"""Tiling settings and the front ends' tiling choices, without torch: the command line checks them before
it imports any model code (``cvvae.tiling`` runs them)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .errors import InputError

NORM_MODES = ("pooled", "exact", "tile")


@dataclass(frozen=True)
class TilingSettings:
    """Runtime tiling; ``None`` disables an axis (as the released config keys do).

    Args:
        frames_per_window: video frames per temporal window (a multiple of 4; the released
            ``en_de_n_frames_a_time``). A window holds ``frames_per_window + 1`` frames.
        tile_size: pixel tile size (a multiple of 8; the released ``tile_spatial_size``).
        overlap: fraction of a tile shared with its neighbour (the released ``tile_overlap_ratio``).
        temporal_overlap: latent frames shared by consecutive windows (default: 2, or 1 for
            windows of at most 8 frames).
        norm: GroupNorm statistics: ``"pooled"`` (exact within a window, pooled over windows in two
            passes: memory flat in the clip's length), ``"exact"`` (exact for the whole clip: one pass,
            but every box waits between GroupNorms, so memory grows with the clip) or ``"tile"``
            (each box's own, one pass, like the release).
        enabled: ``False`` processes every clip whole and keeps the other settings for later.
        halo: latent pixels of real context around every tile (cropped away; 8 pixels each).
        temporal_halo: latent frames of real context around every decoder window.
        norm_passes: passes over the windows with ``norm="pooled"`` (2: record, apply; more refine).
        offload: keep the boxes waiting in lockstep on the CPU (accelerator memory holds one box).
        auto: choose per call (:func:`choose`): the whole clip when its estimated peak memory fits the
            device, otherwise the cheapest tiling that fits. Changing any other setting (or
            ``enable_tiling()``) turns it off unless ``auto`` is given too.
    """

    frames_per_window: int | None = 16
    tile_size: int | None = 576
    overlap: float = 0.2222
    temporal_overlap: int | None = None
    norm: str = "exact"
    enabled: bool = True
    halo: int = 4
    temporal_halo: int = 3
    norm_passes: int = 2
    offload: bool = False
    auto: bool = True

    def __post_init__(self) -> None:
        fpw, tile = self.frames_per_window, self.tile_size
        if fpw is not None and (not _is_int(fpw) or fpw < 4 or fpw % 4):
            raise InputError(f"frames_per_window must be a positive multiple of 4, got {fpw!r}")
        if tile is not None and (not _is_int(tile) or tile < 16 or tile % 8):
            raise InputError(f"tile_size must be a multiple of 8 and at least 16 pixels, got {tile!r}")
        if not isinstance(self.overlap, (int, float)) or not 0.0 <= self.overlap < 0.5:
            raise InputError(f"overlap must be in [0, 0.5), got {self.overlap!r}")
        if self.temporal_overlap is None:
            object.__setattr__(self, "temporal_overlap", 1 if fpw is None or fpw <= 8 else 2)
        if fpw is not None and not (_is_int(self.temporal_overlap) and 1 <= self.temporal_overlap <= fpw // 4):
            raise InputError(
                f"temporal_overlap must be 1 to frames_per_window / 4 latent frames, got {self.temporal_overlap!r}"
            )
        if self.norm not in NORM_MODES:
            raise InputError(f"norm must be one of {NORM_MODES}, got {self.norm!r}")
        if not isinstance(self.auto, bool):
            raise InputError(f"auto must be True or False, got {self.auto!r}")
        for name, low in (("halo", 0), ("temporal_halo", 0), ("norm_passes", 2)):
            value = getattr(self, name)
            if not _is_int(value) or not low <= value <= 64:
                raise InputError(f"{name} must be an integer in {low}..64, got {value!r}")

    def replace(self, **changes) -> TilingSettings:
        """A copy with ``changes`` applied and everything else kept (``temporal_overlap`` is re-derived
        for a new ``frames_per_window`` unless it is given too)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise InputError(f"unknown tiling setting(s) {', '.join(unknown)}")
        if "frames_per_window" in changes and "temporal_overlap" not in changes:
            changes["temporal_overlap"] = None
        if "auto" not in changes and (changes.get("enabled") is True or set(changes) - {"enabled", "offload"}):
            changes["auto"] = False  # asked for tiling, or for particular settings: use them
        return replace(self, **changes)

    @property
    def window_latents(self) -> int | None:
        return None if self.frames_per_window is None or not self.enabled else self.frames_per_window // 4 + 1

    @property
    def tile_latents(self) -> int | None:
        return None if self.tile_size is None or not self.enabled else self.tile_size // 8

    @property
    def overlap_latents(self) -> int:
        return 0 if self.tile_latents is None else round(self.tile_latents * self.overlap)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# What front ends offer (web demo, batch jobs, ``generate --decode-tiling``): see ``tiling_changes``.
TILING_SPECS = ("default", "off", "16", "8", "8/256")


def tiling_changes(spec: str | None) -> dict:
    """A tiling choice as changes for :meth:`TilingSettings.replace`.

    ``"default"`` (or None): the model's own settings; ``"off"``: whole clips; ``"N"``: windows of N
    frames; ``"N/P"``: windows of N frames and tiles of P pixels.
    """
    text = "default" if spec is None else str(spec).strip().lower()
    if text == "default":
        return {}
    if text == "off":
        return {"enabled": False}
    frames, slash, tile = text.partition("/")
    try:
        changes = {"enabled": True, "frames_per_window": int(frames)}
        if slash:
            changes["tile_size"] = int(tile)
    except ValueError:
        raise InputError(
            f"tiling must be 'default', 'off', 'N' (frames per window) or 'N/P' (and tile pixels), got {spec!r}"
        ) from None
    TilingSettings().replace(**changes)  # validate the numbers now
    return changes
