"""Which TFLite signature an artifact runs: the same rule for the converter that measures it and the agent
that serves it."""

from __future__ import annotations

import re

DEFAULT_SIGNATURE = "serving_default"


class SignatureChoiceError(ValueError):
    """The asked signature does not exist, or several exist and none was asked for."""


def choose_signature(available: list[str], asked: str | None) -> str | None:
    """The one asked for, else the only one, else `serving_default`; None for a model without signatures."""
    if asked is not None:
        if asked not in available:
            raise SignatureChoiceError(
                f"no signature {asked!r} (the model has: {', '.join(available) if available else 'none'})"
            )
        return asked
    if not available:
        return None
    if len(available) == 1:
        return available[0]
    if DEFAULT_SIGNATURE in available:
        return DEFAULT_SIGNATURE
    raise SignatureChoiceError(f"the model has several signatures ({', '.join(available)}); choose one")


def plain_tensor_name(name: str) -> str:
    """`serving_default_image:0` -> `image`: TensorFlow's name for a signature's tensor, as the signature names it."""
    return re.sub(r":\d+$", "", name).removeprefix("serving_default_")
