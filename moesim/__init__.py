"""moesim: simulate and cost dense and Mixture-of-Experts LLMs on GPU clusters."""

__version__ = "0.1.0"
