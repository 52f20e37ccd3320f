"""The data layer: corpora as :class:`LabelledText`, and disjoint class splits for few-shot tasks."""
from distmeta.data.icd10cm import load_icd10cm
from distmeta.data.labelled import LabelledText
from distmeta.data.sources import load_source
from distmeta.data.splits import (
    ClassSplit,
    check_ways,
    load_split,
    make_split,
    save_split,
    usable_classes,
)

__all__ = [
    "ClassSplit",
    "LabelledText",
    "check_ways",
    "load_icd10cm",
    "load_source",
    "load_split",
    "make_split",
    "save_split",
    "usable_classes",
]
