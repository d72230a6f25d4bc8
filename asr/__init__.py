"""asr: a speech recognition toolkit (log-mel frontend, RNN-CTC and streaming GRU-CTC models).

    >>> import asr
    >>> asr.load_model().transcribe("speech.wav").text  # doctest: +SKIP
    'OPEN THE DOOR'

:func:`load_model` is :func:`asr.api.load_model`.
"""

__version__ = "0.1.0"
__all__ = ["load_model", "__version__"]


def __getattr__(name: str):
    # imported on first use: asr.runtime runs without torch, and importing it imports this package
    if name == "load_model":
        from asr.api import load_model

        return load_model
    raise AttributeError(f"module 'asr' has no attribute {name!r}")
