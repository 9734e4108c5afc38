"""How far a set of sentence embeddings has moved from the source topic toward the target topic."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

from act_fast.demo.probe import LinearProbe


@dataclass(frozen=True)
class Scores:
    """Means over the sentences of one embedding set ``[N, C]`` (unit rows).

    Attributes:
        target_fraction: fraction the probe classifies as the target topic (p > 0.5).
        target_prob: mean probe probability of the target topic.
        cos_source, cos_target: mean cosine similarity to each topic's centroid.
    """

    target_fraction: float
    target_prob: float
    cos_source: float
    cos_target: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def centroid(embeddings: Tensor) -> Tensor:
    """The unit direction of the mean embedding, ``[C]``."""
    return nn.functional.normalize(embeddings.mean(0), dim=0)


def score(embeddings: Tensor, probe: LinearProbe, source_centroid: Tensor, target_centroid: Tensor) -> Scores:
    """:class:`Scores` of ``embeddings [N, C]`` (L2-normalised rows) against the probe and centroids."""
    p = probe.prob(embeddings)
    return Scores(
        target_fraction=float((p > 0.5).float().mean()),
        target_prob=float(p.mean()),
        cos_source=float((embeddings @ source_centroid).mean()),
        cos_target=float((embeddings @ target_centroid).mean()),
    )
