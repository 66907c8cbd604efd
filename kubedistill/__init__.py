"""kubedistill: knowledge distillation as a declarative Kubernetes workflow."""

__version__ = "0.1.0"
