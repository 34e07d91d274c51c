"""fullscale: the LLM pipeline of the study (torch + transformers).

Not built yet; see the project's open issues.
"""
