"""asr: a speech recognition toolkit (log-mel frontend, BiLSTM-CTC and streaming GRU-CTC)."""

__version__ = "0.1.0"
