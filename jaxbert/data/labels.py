"""Label maps: the values of one record field (str or int labels) <-> class ids ``0..n-1``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jaxbert.data.sources import describe_record

__all__ = ["LabelMap"]


class LabelMap:
    """Maps the values of one record field (str or int labels) to class ids ``0..n-1``.

    The order of ``labels`` defines the ids. Save ``to_dict()`` next to the checkpoint so
    predictions can be decoded and a restored model sees the same ids.
    """

    def __init__(self, field: str, labels: Sequence[str | int]):
        if not isinstance(field, str) or not field:
            raise ValueError(f"LabelMap field must be a non-empty str, got {field!r}")
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
            raise TypeError(f"LabelMap labels must be a list of str or int, got {type(labels).__name__}")
        labels = tuple(labels)
        if not labels:
            raise ValueError(f"LabelMap for field {field!r} needs at least one label")
        kinds = set()
        for i, lab in enumerate(labels):
            if isinstance(lab, bool) or not isinstance(lab, (str, int)):
                raise TypeError(f"LabelMap labels[{i}] must be str or int, got {type(lab).__name__}: {lab!r}")
            kinds.add(str if isinstance(lab, str) else int)
        if len(kinds) > 1:
            raise TypeError(f"LabelMap labels mix str and int: {list(labels)}")
        index: dict[str | int, int] = {}
        for i, lab in enumerate(labels):
            if lab in index:
                raise ValueError(f"LabelMap labels contain {lab!r} twice: {list(labels)}")
            index[lab] = i
        self.field = field
        self.labels = labels
        self._index = index

    # -- construction / persistence
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> LabelMap:
        """From a mapping or ``ml_collections.ConfigDict`` with keys ``field`` and ``labels``."""
        try:
            field, labels = config["field"], config["labels"]
        except (KeyError, TypeError):
            field = getattr(config, "field", None)
            labels = getattr(config, "labels", None)
            if field is None or labels is None:
                raise ValueError(f"label config needs 'field' and 'labels', got {config!r}") from None
        return cls(field, list(labels))

    from_dict = from_config

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "labels": list(self.labels)}

    @classmethod
    def infer(cls, source: Any, field: str) -> LabelMap:
        """All distinct values of ``field`` in ``source``, sorted (reads every record)."""
        values = set()
        for i in range(len(source)):
            record = source[i]
            if field not in record:
                raise ValueError(f"{describe_record(source, i)}: no field {field!r} (has {sorted(record)})")
            values.add(record[field])
        return cls(field, sorted(values))

    # -- lookup
    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, value: Any, where: str | None = None) -> int:
        """The id of ``value``; ``ValueError`` naming ``where``, the value and the valid labels."""
        if not isinstance(value, bool):
            try:
                i = self._index.get(value)
            except TypeError:  # unhashable
                i = None
            if i is not None and type(value) is type(self.labels[i]):
                return i
        place = f"{where}: " if where else ""
        raise ValueError(
            f"{place}label {value!r} ({type(value).__name__}) in field {self.field!r} is not one of the "
            f"{len(self.labels)} valid labels {list(self.labels)}"
        )

    def decode(self, i: int) -> str | int:
        return self.labels[int(i)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.field, self.labels))

    def __repr__(self) -> str:
        return f"LabelMap(field={self.field!r}, labels={list(self.labels)!r})"
