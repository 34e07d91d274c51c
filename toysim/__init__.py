"""toysim: an exact tabular simulator of the online-vs-offline study.

Run ``python -m toysim.gap --help``. Docs: docs/tutorial.md.
"""
