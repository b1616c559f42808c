"""Where the shipped weights are (no model code here: torch-free callers check for them)."""

from pathlib import Path

NANO = Path(__file__).resolve().parent / "nano"  # the small models trained on a CPU
NANO_CVVAE = NANO / "cvvae"
NANO_VAE2D = NANO / "vae2d"
NANO_SVD = NANO / "svd"  # the nano SVD: a diffusers SVD folder whose vae is the nano 2-D VAE
NANO_ADAPTER = NANO / "adapter"  # the nano SVD's adapter to nano CV-VAE latents (the experiment's best arm)
SHIPPED = {"nano": NANO_CVVAE, "nano-2d": NANO_VAE2D}  # model names that mean a folder here
# what outputs of the 'tiny' name (random weights, built in-process: nothing shipped) must say
RANDOM_WEIGHTS_NOTICE = "outputs come from RANDOM weights (the 'tiny' preset): they show the mechanics, not quality"
