"""Build a tiny random FluxPipeline folder (and LoRAs for it) offline, for tests, benchmarks and demos.

The folder has the same layout as a real FLUX.1 diffusers folder, so the server loads it through
the very code path it uses for real weights; only the sizes differ (hidden size 32, one block
each, a 4-block VAE that keeps Flux's scale factor of 8). Nothing is downloaded: both tokenizers
are built from vocabularies written or trained here.

    python -m model_servers.flux.tiny OUT_DIR [--lora-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

_WORDS = (
    "a photo of the cat dog red blue green sky over mountain lake city night day portrait "
    "painting of an old man woman child car tree house flower in with and on at sunset sunrise"
).split()


def _clip_tokenizer(tmp: Path):
    from transformers import CLIPTokenizer

    # A byte-level BPE with every single character and one merge is enough for the tokenizer to
    # encode any prompt; CLIP's special tokens are the last two ids, as in the real vocabulary.
    chars = sorted({chr(c) for c in range(33, 127)})
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(chars)})
    vocab["th</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\nt h</w>\n")
    return CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=77), len(vocab)


def _t5_tokenizer(tmp: Path):
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    rng = random.Random(0)
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(_WORDS, k=12)) for _ in range(400)))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp / "spiece"),
        vocab_size=60,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    tok = T5TokenizerFast(vocab_file=str(tmp / "spiece.model"), extra_ids=0, model_max_length=512)
    return tok, len(tok)


def tiny_transformer(*, guidance_embeds: bool):
    """FLUX.1-dev has a guidance embedding, FLUX.1-schnell has none; the server tells them apart by it."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds,
    )


def build_tiny_flux(out_dir: str | Path, *, variant: str = "dev", seed: int = 0) -> Path:
    """Write a tiny random FLUX.1-shaped pipeline (``dev`` or ``schnell``) to ``out_dir`` with ``save_pretrained``."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    out = Path(out_dir)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        clip_tok, clip_vocab = _clip_tokenizer(tmp)
        t5_tok, t5_vocab = _t5_tokenizer(tmp)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=clip_vocab,
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                projection_dim=32,
                max_position_embeddings=77,
                bos_token_id=clip_vocab - 2,
                eos_token_id=clip_vocab - 1,
                pad_token_id=clip_vocab - 1,
            )
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=t5_vocab,
                d_model=32,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                decoder_start_token_id=0,
            )
        )
        transformer = tiny_transformer(guidance_embeds=variant == "dev")
        # Four blocks: the VAE scale factor is 2**(4-1) = 8, the same as real Flux, so the size
        # rounding the server applies is exactly what it applies to real weights.
        vae = AutoencoderKL(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        )
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tok,
            text_encoder_2=text_encoder_2,
            tokenizer_2=t5_tok,
            transformer=transformer,
        )
        pipe.save_pretrained(out)
    return out


def build_tiny_lora(pipeline_dir: str | Path, lora_path: str | Path, *, seed: int = 1, scale: float = 0.5) -> Path:
    """Write a random LoRA for the tiny transformer as one ``.safetensors`` file."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(pipeline_dir, subfolder="transformer")
    transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    gen = torch.Generator().manual_seed(seed)
    state = get_peft_model_state_dict(transformer)
    # peft's random init only touches lora_A (lora_B starts at zero); fill both so the LoRA
    # changes the image noticeably.
    state = {k: torch.randn(v.shape, generator=gen) * scale for k, v in state.items()}
    path = Path(lora_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FluxPipeline.save_lora_weights(
        save_directory=str(path.parent), transformer_lora_layers=state, weight_name=path.name
    )
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--variant", choices=["dev", "schnell"], default="dev")
    parser.add_argument("--lora-dir", help="also write two random LoRAs (style_a, style_b) here")
    args = parser.parse_args(argv)
    build_tiny_flux(args.out_dir, variant=args.variant)
    if args.lora_dir:
        for i, name in enumerate(("style_a", "style_b")):
            build_tiny_lora(args.out_dir, Path(args.lora_dir) / f"{name}.safetensors", seed=i + 1)
    print(args.out_dir)


if __name__ == "__main__":
    main()
