"""Quanto: durable quant research and trading on Temporal."""

__version__ = "0.1.0"
