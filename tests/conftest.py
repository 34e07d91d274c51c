"""Hypothesis profiles. The default keeps the whole suite under 5 minutes on
2 cores; ``HYPOTHESIS_PROFILE=thorough pytest`` runs 20× more examples."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
