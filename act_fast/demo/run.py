"""The demo pipeline: collect → fit (Linear-AcT, incremental) → steer at strengths λ, and score how
held-out source sentences move toward the target topic."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

import act_fast as af
from act_fast.demo.metrics import Scores, centroid, score
from act_fast.demo.models import embed, tokenize
from act_fast.demo.probe import LinearProbe
from act_fast.demo.sentences import load_topic, split
from act_fast.maps import SteeringMaps

DEFAULT_STRENGTHS = tuple(i / 10 for i in range(11))


@dataclass(frozen=True)
class DemoConfig:
    """What the demo fits and measures.

    Attributes:
        source, target: topic names (see :func:`act_fast.demo.sentences.topics`); the maps move
            ``source`` activations toward ``target``.
        strengths: the λ grid at which held-out source sentences are embedded.
        sites: site preset for :func:`act_fast.sites`.
        support: support preset of the Linear-AcT maps (``q_0_100``: values inside the source's
            [min, max] per channel; ``q_all``: every value).
        held_out: fraction of each topic's sentences kept out of the fit, the probe and the centroids.
        seed: seed of the fit / held-out split.
        batch_size: sentences per forward pass.
        progress: progress bars.
    """

    source: str = "cooking"
    target: str = "football"
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    sites: str = "post_layernorm"
    support: str = "q_0_100"
    held_out: float = 0.25
    seed: int = 0
    batch_size: int = 32
    progress: bool = True

    def __post_init__(self) -> None:
        if self.source == self.target:
            raise ValueError(f"source and target must be different topics, got {self.source!r} twice")
        if not self.strengths:
            raise ValueError("the strength grid is empty")
        if not 0.0 < self.held_out < 1.0:
            raise ValueError(f"held_out must be a fraction in (0, 1), got {self.held_out}")


@dataclass
class DemoResult:
    """The demo's numbers, maps and embeddings.

    Attributes:
        rows: one :class:`Scores` per strength (held-out source sentences, steered), in grid order.
        reference: the held-out target sentences, unsteered: where the source should head.
        unsteered: held-out source embeddings without steering ``[N, C]``.
        steered: held-out source embeddings under steering, per strength.
        modes: how :func:`act_fast.steer` applied each site (``fold`` / ``fused`` / ``op``).
        seconds: wall time of each phase.
    """

    config: DemoConfig
    model_name: str
    num_fit: int
    num_held_out: dict[str, int]
    rows: list[Scores]
    reference: Scores
    maps: SteeringMaps
    unsteered: Tensor
    steered: dict[float, Tensor]
    modes: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def sites(self) -> list[str]:
        """The steered sites, in forward order."""
        return list(self.maps)

    def as_json(self) -> dict[str, Any]:
        """The numbers as plain JSON types (no tensors)."""
        return {
            "model": self.model_name,
            "config": asdict(self.config),
            "method": "linear_act",
            "incremental": True,
            "sites": self.sites,
            "modes": self.modes,
            "num_fit_per_topic": self.num_fit,
            "num_held_out": self.num_held_out,
            "probe": "logistic regression on the unsteered embeddings of both topics' fit sentences",
            "centroids": "mean unsteered embedding of each topic's fit sentences",
            "held_out_source_steered": [{"strength": lam, **s.as_dict()} for lam, s in zip(self.config.strengths, self.rows)],
            "held_out_target_unsteered": self.reference.as_dict(),
            "seconds": self.seconds,
        }


def run_demo(
    tokenizer: Any,
    model: nn.Module,
    config: DemoConfig = DemoConfig(),
    *,
    model_name: str = "model",
    token_type_ids: bool = True,
    maps: SteeringMaps | None = None,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Fits Linear-AcT maps (incremental) from ``config.source`` to ``config.target`` sentences on
    ``model``, steers it at each strength and scores the held-out source sentences.

    Args:
        tokenizer, model: a Hugging Face tokenizer and model (encoder or causal LM); the model's
            base model must return ``last_hidden_state``.
        config: topics, λ grid, sites, support, split.
        model_name: for the report.
        token_type_ids: pass ``token_type_ids`` to the model (BERT-like encoders).
        maps: maps fitted earlier (e.g. this demo's ``maps.safetensors``): used instead of fitting.
        log: called with one line as each phase starts and ends (the command prints them on
            stderr, so a log without progress bars still shows where the run is).
    """
    say = log or (lambda line: None)
    seconds: dict[str, float] = {}
    device = next(model.parameters()).device
    fit_src, held_src = split(load_topic(config.source), config.held_out, config.seed)
    fit_tgt, held_tgt = split(load_topic(config.target), config.held_out, config.seed)
    n_fit = min(len(fit_src), len(fit_tgt))  # both topics fit on the same number of sentences
    fit_src, fit_tgt = fit_src[:n_fit], fit_tgt[:n_fit]

    def batches(sentences: list[str]) -> list[dict[str, Tensor]]:
        return tokenize(tokenizer, sentences, config.batch_size, device, token_type_ids=token_type_ids)

    fit_src_b, fit_tgt_b, held_src_b, held_tgt_b = map(batches, (fit_src, fit_tgt, held_src, held_tgt))
    start = time.perf_counter()
    if maps is None:
        sites = af.sites(model, config.sites)
        say(f"fit: Linear-AcT on {len(sites)} sites, incremental (each site collects statistics of {n_fit} + {n_fit} "
            f"sentences in {len(fit_src_b)} + {len(fit_tgt_b)} batches with the sites before it steered)")
        maps = af.fit(model, fit_src_b, fit_tgt_b, sites, method="linear_act", support=config.support, incremental=True, progress=config.progress)
        seconds["fit"] = time.perf_counter() - start
        say(f"fit: done in {seconds['fit']:.1f} s")

    say("probe: embedding the fit and held-out sentences unsteered, training the linear probe")
    start = time.perf_counter()
    emb_fit_src, emb_fit_tgt = embed(model, fit_src_b), embed(model, fit_tgt_b)
    probe = LinearProbe.train(emb_fit_src, emb_fit_tgt)
    c_src, c_tgt = centroid(emb_fit_src), centroid(emb_fit_tgt)
    unsteered = embed(model, held_src_b)
    reference = score(embed(model, held_tgt_b), probe, c_src, c_tgt)
    seconds["probe"] = time.perf_counter() - start

    say(f"steer: embedding {len(held_src)} held-out {config.source} sentences at {len(config.strengths)} strengths")
    start = time.perf_counter()
    steered: dict[float, Tensor] = {}
    with af.steer(model, maps, strength=0.0) as handle:
        modes = dict(handle.modes)
        for lam in tqdm(config.strengths, desc="steer", disable=not config.progress, leave=False):
            handle.set_strength(float(lam))
            steered[float(lam)] = embed(model, held_src_b)
    seconds["steer"] = time.perf_counter() - start
    say(f"steer: done in {seconds['steer']:.1f} s")
    rows = [score(steered[float(lam)], probe, c_src, c_tgt) for lam in config.strengths]
    return DemoResult(
        config=config,
        model_name=model_name,
        num_fit=n_fit,
        num_held_out={config.source: len(held_src), config.target: len(held_tgt)},
        rows=rows,
        reference=reference,
        maps=maps,
        unsteered=unsteered,
        steered=steered,
        modes=modes,
        seconds=seconds,
    )
