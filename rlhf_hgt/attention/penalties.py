"""Moved to :mod:`rlhf_hgt.penalties` (the core: every stack shares it); kept so that
``from rlhf_hgt.attention.penalties import ...`` keeps working."""

from rlhf_hgt.penalties import EPS, feature_energy, feature_gradient_share, outside_share

__all__ = ["EPS", "feature_energy", "feature_gradient_share", "outside_share"]
