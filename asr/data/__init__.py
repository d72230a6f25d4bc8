"""Corpora: JSONL manifests, LibriSpeech download and preparation, batching."""
