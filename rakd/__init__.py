"""rakd: reinforcement-aware knowledge distillation of reasoning LLMs for edge devices."""

__version__ = "0.6.0"
