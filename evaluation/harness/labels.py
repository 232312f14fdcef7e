"""The dataset's classes in the model's label space: matched by name (case and separators ignored) when both
have names, so that a dataset whose class ids are ordered otherwise is still scored right, and refused in one
line when they do not match, rather than scored as chance.

>>> class_mapping({0: "ball", 1: "box"}, {0: "Arrow", 1: "ball", 2: "BOX"}, "auto", "classes", "--label_mapping")
{0: 1, 1: 2}
>>> class_mapping({0: "cat", 1: "dog"}, {0: "LABEL_0", 1: "LABEL_1"}, "auto", "classes", "--label_mapping") is None
True
"""

from __future__ import annotations

import re

from .data import DataError

#: ``--label_mapping`` / ``--category_mapping``: auto (by name when both sides have names, else the ids), by the
#: names, or the ids as they are.
MAPPINGS = ("auto", "name", "id")


def normalized(name: str) -> str:
    """``name`` compared case- and separator-insensitively (``"Traffic light"`` == ``"traffic_light"``)."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def generic(id2label: dict[int, str]) -> bool:
    """Whether a model's label names are placeholders (``LABEL_0``, ``"3"``): nothing to match by."""
    return all(re.fullmatch(r"(label_?)?\d+", normalized(name)) for name in id2label.values())


def class_mapping(names: dict[int, str] | None, id2label: dict[int, str], mapping: str, what: str,
                  flag: str) -> dict[int, int] | None:
    """Dataset class id -> model class id, or ``None`` to take the dataset's ids as they are.

    ``names`` are the dataset's class names by id (``None`` if it has none), ``id2label`` the model's; ``what`` and
    ``flag`` name the dataset's classes and the overriding flag in messages. ``"auto"`` matches by name when both
    sides have real names and the ids disagree with them; a :class:`DataError` names both lists when they do not
    match at all.
    """
    if mapping == "id":
        return None
    if not names or generic(id2label):
        if mapping == "name":
            raise DataError(f"{flag} name needs class names on both sides; the dataset's {what}: {names or 'none'}, "
                            f"the model's labels: {sorted(id2label.values())}")
        return None
    ids = {normalized(name): i for i, name in id2label.items()}
    if mapping == "auto" and all(normalized(id2label.get(i, "")) == normalized(n) for i, n in names.items()):
        return None  # the same classes under the same ids
    unknown = [name for name in names.values() if normalized(name) not in ids]
    if unknown:
        raise DataError(f"the dataset's {what} {sorted(names.values())} are not the model's labels "
                        f"{sorted(id2label.values())} ({', '.join(map(repr, sorted(unknown)))} not found); pass "
                        f"{flag} id to score the ids as they are")
    return {i: ids[normalized(name)] for i, name in names.items()}
