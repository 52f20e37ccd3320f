"""The ``data:`` and ``tokenizer:`` sections: which corpus or task family, the class split, episode shapes, mixtures."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distmeta.config._base import _Section


class SinusoidConfig(_Section):
    """The classic MAML regression family: y = A sin(x - phase)."""

    amplitude: tuple[float, float] = Field((0.1, 5.0), description="range A is drawn from, per task")
    phase: tuple[float, float] = Field((0.0, 3.141592653589793), description="range the phase is drawn from, per task")
    x_range: tuple[float, float] = Field((-5.0, 5.0), description="range the inputs x are drawn from")


class SplitConfig(_Section):
    """Disjoint train / validation / test classes: fractions drawn from ``seed``, or explicit names."""

    train: float = Field(0.6, gt=0, lt=1, description="fraction of the classes for meta-training")
    val: float = Field(0.2, ge=0, lt=1, description="fraction of the classes for meta-validation")
    test: float = Field(0.2, gt=0, lt=1, description="fraction of the classes for meta-test")
    train_classes: list[str] | None = Field(None, description="explicit meta-train class names (instead of fractions)")
    val_classes: list[str] | None = Field(None, description="explicit meta-validation class names")
    test_classes: list[str] | None = Field(None, description="explicit meta-test class names")

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "SplitConfig":
        explicit = [self.train_classes, self.val_classes, self.test_classes]
        if any(c is not None for c in explicit):
            if self.train_classes is None or self.test_classes is None:
                raise ValueError("explicit class lists need at least data.split.train_classes and data.split.test_classes")
            return self
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"data.split fractions train+val+test must sum to 1, got {total:g}")
        return self


class MixtureComponent(_Section):
    """One source of a task mixture (``data.mixture``): its weight and episode shape; unset fields take ``data.*``."""

    source: str = Field(description="a data.source value")
    weight: float = Field(1.0, gt=0, description="relative frequency of this source's tasks")
    ways: int | None = Field(None, ge=1, description="this source's ways (default data.ways)")
    shots: int | None = Field(None, ge=1, description="this source's shots (default data.shots)")
    queries: int | None = Field(None, ge=1, description="this source's queries (default data.queries)")
    text_column: str | None = Field(None, description="default data.text_column")
    label_column: str | None = Field(None, description="default data.label_column")
    hf_config: str | None = Field(None, description="default data.hf_config")
    hf_split: str | None = Field(None, description="default data.hf_split")
    sinusoid: SinusoidConfig | None = Field(None, description="a sinusoid family: amplitude / phase / x_range")


class DataConfig(_Section):
    """Which corpus, and the shape of its N-way K-shot episodes."""

    source: str = Field("icd10cm", description="icd10cm (built in, offline) | sinusoid | hf:NAME | csv:PATH | "
                        "json:PATH | jsonl:PATH | parquet:PATH")
    text_column: str = Field("text", description="file and hub sources: the column holding the text")
    label_column: str = Field("label", description="file and hub sources: the column holding the class")
    hf_config: str | None = Field(None, description="hf:NAME: the dataset's configuration")
    hf_split: str = Field("train", description="hf:NAME: the split read")
    ways: int = Field(5, ge=1, description="N: classes per episode")
    shots: int = Field(1, ge=1, description="K: labelled support examples per class")
    queries: int = Field(15, ge=1, description="query examples per class in meta-training and meta-validation")
    max_length: int = Field(32, ge=4, le=512, description="tokens per text at most (longer texts are cut)")
    max_text_chars: int | None = Field(
        100_000, ge=1, description="characters per text at most: a longer text is refused with its row "
        "(tokenizer training time and memory grow with it); null: no cap")
    max_word_chars: int | None = Field(
        1_000, ge=1, description="characters per whitespace-separated word at most: a longer one is refused with "
        "its row (WordPiece training slows faster than linearly with a word's length; WordPiece encodes a word "
        "over 100 characters as [UNK] anyway); null: no cap")
    small_classes: Literal["error", "drop"] = Field(
        "error", description="classes with fewer than shots + queries examples: error (list them) | drop (warn "
        "with the count)")
    split: SplitConfig = SplitConfig()
    sinusoid: SinusoidConfig = SinusoidConfig()
    mixture: list[MixtureComponent] | None = Field(
        None, description="tasks from several sources (weights, per-source ways/shots); replaces data.source")
    ways_range: tuple[int, int] | None = Field(
        None, description="meta-train only (Meta-Dataset style): each meta-batch's ways drawn uniformly from "
        "[lo, hi], inclusive, lo >= 2, as a function of (seed, step). Drawn per meta-batch, not per task, so a "
        "step's tasks share one shape and a task group stacks into one tensor batch for vmap. ProtoNet / "
        "Proto-MAML only (a prototype head; fixed-head algorithms have one data.ways-way head). data.ways is "
        "then not a training shape (it need not lie in the range): it stays the meta-validation ways")
    shots_range: tuple[int, int] | None = Field(
        None, description="meta-train only: each meta-batch's shots drawn uniformly from [lo, hi], inclusive, "
        "lo >= 1, per meta-batch like ways_range (any classification algorithm). data.shots is then not a "
        "training shape (it need not lie in the range): it stays the meta-validation shots")

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        kinds = ("icd10cm", "sinusoid", "hf:", "csv:", "json:", "jsonl:", "parquet:")
        if v in ("icd10cm", "sinusoid") or any(v.startswith(k) and len(v) > len(k) for k in kinds[2:]):
            return v
        raise ValueError(
            f"unknown data source {v!r}; use icd10cm, sinusoid, hf:NAME, csv:PATH, json:PATH, jsonl:PATH or parquet:PATH"
        )

    @property
    def is_regression(self) -> bool:
        return self.source == "sinusoid"

    @field_validator("ways_range", "shots_range")
    @classmethod
    def _inclusive_range(cls, v: tuple[int, int] | None, info: Any) -> tuple[int, int] | None:
        if v is None:
            return v
        lo, hi = v
        least = 2 if info.field_name == "ways_range" else 1
        if lo > hi:
            raise ValueError(f"lower bound {lo} is above upper bound {hi} (inclusive [lo, hi])")
        if lo < least:
            raise ValueError(f"lower bound {lo} must be >= {least}")
        return v

    @model_validator(mode="after")
    def _ranges_need_one_text_source(self) -> "DataConfig":
        for name in ("ways_range", "shots_range"):
            if getattr(self, name) is None:
                continue
            if self.is_regression:
                raise ValueError(f"data.{name}: variable-shape episodes are for classification sources, not sinusoid")
            if self.mixture:
                raise ValueError(f"data.{name}: not with data.mixture (each source has its own ways/shots there)")
        return self

    def train_ways(self) -> int:
        """The largest ways of a meta-train episode (``ways_range``'s upper bound, else ``ways``)."""
        return self.ways_range[1] if self.ways_range else self.ways

    def train_shots(self) -> int:
        """The largest shots of a meta-train episode (``shots_range``'s upper bound, else ``shots``)."""
        return self.shots_range[1] if self.shots_range else self.shots

    @model_validator(mode="after")
    def _mixture_of_one_kind(self) -> "DataConfig":
        if self.mixture is None:
            return self
        if not self.mixture:
            raise ValueError("data.mixture: give at least one source (or leave it out)")
        for i, comp in enumerate(self.mixture):
            DataConfig._known_source(comp.source)
            sinusoid = comp.source == "sinusoid"
            if sinusoid != self.is_regression:
                want = "sinusoid families need data.source=sinusoid" if sinusoid else \
                    "a text source cannot join data.source=sinusoid (one model: regression or classification)"
                raise ValueError(f"data.mixture.{i}.source={comp.source!r}: {want}")
            if comp.sinusoid is not None and not sinusoid:
                raise ValueError(f"data.mixture.{i}.sinusoid: only for source=sinusoid, not {comp.source!r}")
        return self

    def components(self) -> list["DataConfig"]:
        """One plain DataConfig per ``data.mixture`` source (unset fields from ``data.*``); ``[self]`` without one."""
        if not self.mixture:
            return [self]
        out = []
        for comp in self.mixture:
            update = {k: v for k, v in comp.model_dump().items() if v is not None and k != "weight"}
            update["sinusoid"] = comp.sinusoid if comp.sinusoid is not None else self.sinusoid
            out.append(self.model_copy(update={**update, "mixture": None}))
        return out


class TokenizerConfig(_Section):
    """Text to token ids: trained on the meta-train split, or the pretrained encoder's own."""

    kind: Literal["wordpiece", "bpe", "pretrained"] = Field(
        "wordpiece", description="wordpiece / bpe: trained on the meta-train split; pretrained: the encoder's own "
        "(model.name minilm / hf)")
    vocab_size: int = Field(8000, ge=100, description="wordpiece / bpe: vocabulary size")
    min_frequency: int = Field(2, ge=1, description="wordpiece / bpe: least count for a token to join the vocabulary")
    lowercase: bool = Field(True, description="wordpiece / bpe: lowercase texts first")
