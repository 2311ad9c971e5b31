"""Tiny HuggingFace models, built offline and saved with ``save_pretrained``: real architectures
with random (seeded) weights, a few hundred kilobytes each, for tests that must not download.

Each ``build_tiny_*(directory)`` writes a model directory (weights, config, processor, tokenizer
where the model has one) under ``directory`` and returns it; the same call builds the same bytes
(fixed seed), so a directory's weights digest is stable. Their outputs mean nothing: the tests
check shapes, types, batching and options, not what the models say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SEED = 0

# Words for the tiny tokenizers: what a caption made of them looks like does not matter.
WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "is",
    "are",
    "photo",
    "picture",
    "image",
    "cat",
    "cats",
    "dog",
    "dogs",
    "person",
    "people",
    "car",
    "cars",
    "tree",
    "trees",
    "sky",
    "road",
    "house",
    "table",
    "chair",
    "red",
    "green",
    "blue",
    "yellow",
    "black",
    "white",
    "small",
    "large",
    "sitting",
    "standing",
    "next",
    "to",
    "two",
    "three",
]

BLIP_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]")
CLASS_LABELS = ("circle", "square", "triangle", "star", "cross", "ring")
DETECTION_LABELS = ("circle", "square", "triangle")


def _seeded() -> None:
    import torch

    torch.manual_seed(SEED)


def _bert_tokenizer(**kwargs: Any) -> Any:
    from transformers import BertTokenizer

    vocab = {token: i for i, token in enumerate((*BLIP_SPECIALS, *WORDS))}
    return BertTokenizer(vocab=vocab, **kwargs)


def build_tiny_blip(directory: Path) -> Path:
    """A BLIP captioner (``BlipForConditionalGeneration`` + ``BlipProcessor``) on 32 x 32 images."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    _seeded()
    out = directory / "tiny-blip"
    tokenizer = _bert_tokenizer(bos_token="[DEC]", extra_special_tokens=["[ENC]"])
    vocab_size = len(tokenizer)
    config = BlipConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "bos_token_id": tokenizer.convert_tokens_to_ids("[DEC]"),
            "eos_token_id": tokenizer.sep_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
        image_text_hidden_size=32,
    )
    model = BlipForConditionalGeneration(config).eval()
    _perturb(model, 0.2)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_image_classifier(directory: Path) -> Path:
    """A ViT image classifier over ``CLASS_LABELS`` on 32 x 32 images."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    _seeded()
    out = directory / "tiny-vit-classifier"
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        id2label=dict(enumerate(CLASS_LABELS)),
        label2id={label: i for i, label in enumerate(CLASS_LABELS)},
    )
    model = ViTForImageClassification(config).eval()
    _perturb(model)
    model.save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def build_tiny_detr(directory: Path) -> Path:
    """A DETR detector over ``DETECTION_LABELS`` with a tiny ResNet backbone (no timm), its image
    processor resizing the shorter side to 64 (the longer at most 96)."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    _seeded()
    out = directory / "tiny-detr"
    backbone = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        out_features=["stage2"],
    )
    config = DetrConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=10,
        id2label=dict(enumerate(DETECTION_LABELS)),
        label2id={label: i for i, label in enumerate(DETECTION_LABELS)},
    )
    model = DetrForObjectDetection(config).eval()
    _perturb(model, 0.2)
    model.save_pretrained(out)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(out)
    return out


def build_tiny_clip(directory: Path) -> Path:
    """A CLIP model (zero-shot image classification) with a character-level BPE tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    _seeded()
    out = directory / "tiny-clip"
    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,'-"
    specials = ("<|startoftext|>", "<|endoftext|>")
    tokens = (*specials, *letters, *(f"{c}</w>" for c in letters))
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokens),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    model = CLIPModel(config).eval()
    _perturb(model)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _perturb(model: Any, scale: float = 0.05) -> None:
    """Spread the weights out: freshly initialised layers are so close to zero (BLIP's vision tower
    starts at 1e-10) that every input would give the same output; with noise, different images give
    different captions and boxes."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
