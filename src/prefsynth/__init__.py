"""prefsynth: synthetic DPO/KTO preference datasets, generated with vLLM and checked for label noise."""

__version__ = "0.1.0"
