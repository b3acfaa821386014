"""Evaluation: sampling the generator, torch-fidelity glue over the registered feature extractors."""
