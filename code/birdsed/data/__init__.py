"""Data stages: metadata, audio decoding, crops, sampling."""
