"""A tiny random Stable Diffusion pipeline saved in diffusers' format, for offline tests.

Real component classes (``UNet2DConditionModel``, ``AutoencoderKL``, a transformers
``CLIPTextModel``, ``DDIMScheduler``) at toy sizes, and the offline WordPiece tokenizer of
``xmr.models.offline_tokenizer`` (Chinese descriptions are split per character), saved with
``save_pretrained`` so it loads back through ``diffusers:DIR`` like any downloaded pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from xmr.io.atomic import check_output_dir
from xmr.models.offline_tokenizer import BOS, EOS, PAD, train_wordpiece


def create_tiny_text2image(
    out_dir: str | os.PathLike,
    texts: Iterable[str] | None = None,
    *,
    seed: int = 0,
    sample_size: int = 32,
    context_length: int = 32,
) -> Path:
    """Write a random StableDiffusionPipeline of a few hundred thousand parameters.

    Args:
        out_dir: directory to write.
        texts: texts to build the tokenizer's vocabulary from (default: built-in words).
        seed: weight initialisation seed (the global RNG is left untouched).
        sample_size: default output size in pixels (the latent is a quarter of it per side).
        context_length: text length in tokens.

    Returns:
        The output directory.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    out = check_output_dir(out_dir)
    tokenizer = train_wordpiece(texts, model_max_length=context_length)
    vocab = tokenizer.get_vocab()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size // 4,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16, 16),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=sample_size,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=context_length,
                pad_token_id=vocab[PAD],
                bos_token_id=vocab[BOS],
                eos_token_id=vocab[EOS],
            )
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    try:
        pipe.save_pretrained(out)
    finally:
        diffusers_logging.enable_progress_bar()
    return out
