"""Site presets of transformers models, keyed by ``config.model_type``.

``post_layernorm`` per family (the AcT paper's Gemma choice and its closest analogue elsewhere):

- gemma2, gemma3_text: ``post_attention_layernorm`` and ``post_feedforward_layernorm``, the norms
  on the attention and MLP outputs before each residual add (2 per layer);
- llama, mistral, qwen2, qwen3, gemma, phi3: ``post_attention_layernorm``, the norm after
  attention that feeds the MLP (1 per layer);
- gpt2: ``ln_2``, the same pre-MLP norm (1 per layer);
- bert: ``attention.output.LayerNorm`` and ``output.LayerNorm``, the post-residual output norms
  of the attention and feed-forward sublayers (2 per layer).

``layernorm`` is every norm of the layers (not per-head ``q_norm`` / ``k_norm``, not the final
norm); ``o_proj`` the attention output projection; ``attn_out`` the attention module (its first
output); ``mlp_out`` the MLP module, for BERT its output projection ``output.dense`` (BERT has no
MLP module; ``attention`` is its attention sublayer, residual and LayerNorm included).
"""

from __future__ import annotations

from act_fast.integrations.families import SiteFamily

LLAMA = SiteFamily(
    r"layers\.\d+",
    {
        "post_layernorm": r"post_attention_layernorm",
        "layernorm": r"input_layernorm|post_attention_layernorm",
        "o_proj": r"self_attn\.o_proj",
        "attn_out": r"self_attn",
        "mlp_out": r"mlp",
    },
)
GEMMA2 = LLAMA.with_presets(
    post_layernorm=r"post_attention_layernorm|post_feedforward_layernorm",
    layernorm=r"input_layernorm|post_attention_layernorm|pre_feedforward_layernorm|post_feedforward_layernorm",
)
GPT2 = SiteFamily(
    r"h\.\d+",
    {"post_layernorm": r"ln_2", "layernorm": r"ln_1|ln_2", "o_proj": r"attn\.c_proj", "attn_out": r"attn", "mlp_out": r"mlp"},
)
BERT = SiteFamily(
    r"layer\.\d+",
    {
        "post_layernorm": r"(?:attention\.)?output\.LayerNorm",
        "layernorm": r"(?:attention\.)?output\.LayerNorm",
        "o_proj": r"attention\.output\.dense",
        "attn_out": r"attention",
        "mlp_out": r"output\.dense",
    },
)

TRANSFORMERS_FAMILIES: dict[str, SiteFamily] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"), LLAMA),
    **dict.fromkeys(("gemma2", "gemma3_text"), GEMMA2),
    "gpt2": GPT2,
    "bert": BERT,
}
