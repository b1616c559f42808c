"""Fine-tuning the SVD UNet on CV-VAE latents with PEFT: ``python -m finetune cache|train|evaluate|params``."""
