"""Model zoo: SmoothNet and every baseline of the paper, built by name."""

from smoothnet.models.registry import build_model, count_parameters, list_models, register_model

__all__ = ["build_model", "count_parameters", "list_models", "register_model"]
