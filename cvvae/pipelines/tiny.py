"""Tiny random components for the ``tiny`` preset: built in-process, no download, CPU-fast.

Every output made from these is noise-like; front ends show ``cvvae.loading.RANDOM_WEIGHTS_NOTICE``.
The configurations follow diffusers' own test configs (the CLIP image encoder must take 224x224
inputs because SVD always resizes the conditioning image to 224).
"""

from __future__ import annotations

import torch

from ..loading import build_tiny_vae


def tiny_tokenizer():
    """An offline byte-level CLIP tokenizer (514 tokens, no merges), built without vocab files."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_encoder(tok, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return CLIPTextModel(cfg).eval()


def _sd_unet(**kw):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
        **kw,
    ).eval()


def _sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[8, 16, 16, 16],  # 4 levels: 8x down like the real VAEs
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        norm_num_groups=2,
    ).eval()


def tiny_svd_unet(seed: int | None = None):
    """The tiny SVD UNet alone (8 input channels: 4 noisy + 4 image latents); seeded when ``seed`` is given."""
    from diffusers import UNetSpatioTemporalConditionModel

    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        return UNetSpatioTemporalConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=32,
            in_channels=8,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            cross_attention_dim=32,
            num_attention_heads=8,
            projection_class_embeddings_input_dim=96,
            addition_time_embed_dim=32,
        ).eval()


def build_tiny_svd(seed: int = 0) -> dict:
    """Random tiny SVD components + a tiny CV-VAE (``vae``) and SVD's temporal decoder (``native_vae``)."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = tiny_svd_unet()
        native_vae = AutoencoderKLTemporalDecoder(
            block_out_channels=[32, 32, 32, 32],  # 4 levels: 8x down like SVD's (GroupNorm needs 32s)
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4,
            latent_channels=4,
        ).eval()
        vision = CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,
            intermediate_size=37,
            patch_size=32,
        )
        image_encoder = CLIPVisionModelWithProjection(vision).eval()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    return dict(
        unet=unet,
        image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessorPil(crop_size=224, size=224),
        scheduler=scheduler,
        native_vae=native_vae,
        vae=build_tiny_vae(seed),
    )


def build_tiny_animatediff(seed: int = 0) -> dict:
    """Random tiny AnimateDiff components (SD UNet + motion adapter) + a tiny CV-VAE."""
    from diffusers import DDIMScheduler, MotionAdapter

    tok = tiny_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = _sd_unet()
        native_vae = _sd_vae()
        text_encoder = _text_encoder(tok)
        motion_adapter = MotionAdapter(
            block_out_channels=(32, 64),
            motion_layers_per_block=2,
            motion_norm_num_groups=2,
            motion_num_attention_heads=4,
        ).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False)
    return dict(
        unet=unet,
        motion_adapter=motion_adapter,
        text_encoder=text_encoder,
        tokenizer=tok,
        scheduler=scheduler,
        native_vae=native_vae,
        vae=build_tiny_vae(seed),
    )


def build_tiny_sd21(seed: int = 0) -> dict:
    """Random tiny SD 2.1-style text-to-image components (v-prediction); CV-VAE decodes its latents."""
    from diffusers import DDIMScheduler

    tok = tiny_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = _sd_unet()
        text_encoder = _text_encoder(tok)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    return dict(unet=unet, text_encoder=text_encoder, tokenizer=tok, scheduler=scheduler)


def build_tiny_sd3(seed: int = 0) -> dict:
    """Random tiny SD3 components (two CLIP text encoders, no T5) + a tiny CV-VAE-SD3 and SD3-style image VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from ..loading import build_tiny_vae

    tok = tiny_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=32,
            patch_size=1,
            in_channels=16,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=32,
            pooled_projection_dim=64,
            out_channels=16,
        ).eval()
        text = CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        encoders = [CLIPTextModelWithProjection(text).eval() for _ in range(2)]
        native_vae = AutoencoderKL(  # SD3's layout: 16 channels, no quant convs, a shift
            block_out_channels=[8, 16, 16, 16],
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            latent_channels=16,
            norm_num_groups=4,
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=1.5305,
            shift_factor=0.0609,
        ).eval()
    return dict(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=encoders[0],
        tokenizer=tok,
        text_encoder_2=encoders[1],
        tokenizer_2=tok,
        native_vae=native_vae,
        vae=build_tiny_vae(seed, variant="sd3"),
    )
