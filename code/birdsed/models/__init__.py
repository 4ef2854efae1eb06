"""Model factory and building blocks."""

from birdsed.models.sed import SEDModel, create_model

__all__ = ["SEDModel", "create_model"]
