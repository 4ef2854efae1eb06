"""The spellings users type for a boolean and a `key=value` pair, read one way everywhere.

Hyperparameters (the job), launcher options and the local runners all accept these; each caller raises
its own error type (ConfigError in the job, UsageError in the launcher) with the name of what was wrong.
"""

from __future__ import annotations

TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})


def parse_bool(raw: object) -> bool | None:
    """True/False for a boolean or one of the words above (any case, spaces around); None for anything else."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    return None


def split_key_value(item: str) -> tuple[str, str] | None:
    """`" key = value "` -> `("key", "value")` (the value may hold `=`); None without `=` or without a key."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        return None
    return key.strip(), value.strip()
