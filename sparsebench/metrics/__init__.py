"""Evaluation: sampling the generator, torch-fidelity glue, the offline digits feature extractor."""
