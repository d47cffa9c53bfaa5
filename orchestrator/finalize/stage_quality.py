"""The quality report per stage of a job with stages: lengths, diversity and truncation of each generate
stage's text, the scores of each judge stage, over the kept rows (a skipped stage's null values left out).

Measured in the same single read of the kept rows as the rest of the report, in bounded memory: a
`BottomK` sample of each stage's texts for diversity, every length as an integer array.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from orchestrator.finalize import diversity
from orchestrator.spec.job import JobSpec
from orchestrator.spec.stages import GenerateStage, JudgeStage


@dataclass
class StageMeasures:
    """Running per-stage measurements of the kept rows."""

    spec: JobSpec
    samples: dict[str, diversity.BottomK] = field(default_factory=dict)
    chars: dict[str, list[np.ndarray]] = field(default_factory=dict)
    tokens: dict[str, list[np.ndarray]] = field(default_factory=dict)
    truncated: Counter[str] = field(default_factory=Counter)
    scores: dict[str, Counter[int]] = field(default_factory=dict)

    def add(self, table: pa.Table, keys: np.ndarray) -> None:
        for stage in self.spec.stages or []:
            if isinstance(stage, GenerateStage):
                self._add_texts(stage.name, table, keys)
            elif isinstance(stage, JudgeStage):
                scores = table.column(f"{stage.name}_score").drop_null().to_pylist()
                self.scores.setdefault(stage.name, Counter()).update(scores)

    def _add_texts(self, name: str, table: pa.Table, keys: np.ndarray) -> None:
        texts = table.column(name).to_pylist()
        sample = self.samples.setdefault(name, diversity.BottomK(self.spec.quality.sample_rows))
        for key, text in zip(keys.tolist(), texts, strict=True):
            if text is not None:
                sample.add(key, text)
        self.chars.setdefault(name, []).append(np.array([len(t) for t in texts if t is not None], dtype=np.int64))
        tokens = table.column(f"{name}_completion_tokens").drop_null()
        self.tokens.setdefault(name, []).append(tokens.to_numpy(zero_copy_only=False).astype(np.int64))
        finish = table.column(f"{name}_finish_reason").to_pylist()
        self.truncated[name] += sum(f == "length" for f in finish)

    def report(self) -> dict[str, Any]:
        """Each stage's section of the quality report, in stage order."""
        out: dict[str, Any] = {}
        for stage in self.spec.stages or []:
            if isinstance(stage, GenerateStage) and stage.name in self.chars:
                chars = np.concatenate(self.chars[stage.name])
                out[stage.name] = {
                    "kind": "generate", "rows": int(chars.size), "chars": diversity.length_summary(chars),
                    "tokens": diversity.length_summary(np.concatenate(self.tokens[stage.name])),
                    "diversity": diversity.diversity_metrics(self.samples[stage.name].texts()),
                    "truncated_share": self.truncated[stage.name] / chars.size if chars.size else 0.0}
            elif isinstance(stage, JudgeStage) and stage.name in self.scores:
                counts = self.scores[stage.name]
                judged = sum(counts.values())
                low, high = stage.scale
                out[stage.name] = {"kind": "judge", "rows": judged,
                                   "scores": {str(k): counts.get(k, 0) for k in range(low, high + 1)},
                                   "mean": sum(k * v for k, v in counts.items()) / judged if judged else None}
        return out
