"""fullscale: the study of Tang et al. 2024 with language models (torch + transformers).

Run ``python -m fullscale.run --help``. Docs: docs/fullscale.md.
"""
