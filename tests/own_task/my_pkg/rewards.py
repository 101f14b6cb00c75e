"""An extra reward term: shorter responses score higher (tokens / 100 off)."""


def brevity(response: str, record: dict, tokens: int) -> float:
    return -tokens / 100
