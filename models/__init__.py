"""Decoders, their training, export and compiled runtimes (``rtbci.models``)."""
