"""Tiny Hugging Face checkpoints on disk (a model folder with a tokenizer), built offline.

Command-line tools and serving engines load models by path, so their tests need a real folder:
``config.json`` + safetensors weights + a tokenizer. The tokenizer is a byte-level BPE trained here
on the sentences shipped in ``act_fast/data`` (nothing is downloaded); the model is a 2-layer Llama
with random weights, saved in float32.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def corpus() -> list[str]:
    """The sentences of every topic file shipped with act_fast, one per line."""
    data = Path(__file__).resolve().parents[1] / "act_fast" / "data"
    return [line.strip() for f in sorted(data.glob("*.txt")) for line in f.read_text().splitlines() if line.strip()]


def train_tokenizer(vocab_size: int = 512):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on :func:`corpus`; pad ``<pad>`` (id 0),
    bos ``<s>`` (1), eos ``</s>`` (2), unk ``<unk>`` (3); adds bos to every sequence."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", padding_side="left"
    )


def tiny_llama_checkpoint(path: str | Path, *, seed: int = 0, **config_overrides) -> Path:
    """Writes a 2-layer Llama (hidden 64, 4 heads of 16, float32) and its tokenizer to ``path``.

    ``config_overrides`` replace entries of the LlamaConfig (e.g. ``head_dim`` / ``hidden_size`` for
    engines that need other head sizes). Returns ``path``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = train_tokenizer()
    vocab = len(tokenizer)
    config = LlamaConfig(
        **{
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": vocab,
            "max_position_embeddings": 256,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            **config_overrides,
        }
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
