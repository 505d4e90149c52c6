"""The one comparison behind every "does this model ship?": `beats`, by the judge that scored both.

Labels may tie (a tie keeps what labels cannot tell apart: the candidate); the proxy, a heuristic,
must win outright by more than `margin`. The promotion policy (`raysegment.registry.promotion`), the
closed loop's search, the study's pick and the criteria's regret all decide through it.
"""

from __future__ import annotations

from raysegment.config import Judge


def beats(candidate: float, incumbent: float, judge: Judge, margin: float = 0.0) -> bool:
    if judge == "labels":
        return candidate >= incumbent + margin
    return candidate > incumbent + margin


def pick(scores: dict[str, float], incumbent: str, judge: Judge, margin: float = 0.0) -> str:
    """What ships among `scores` (the incumbent's included): the best one when it `beats` the
    incumbent, else the incumbent. Among equal bests the incumbent comes first."""
    best = max(scores, key=lambda c: (scores[c], c == incumbent))
    return best if best != incumbent and beats(scores[best], scores[incumbent], judge, margin) else incumbent
