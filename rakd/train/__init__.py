"""Training loops: SFT (teacher, warm start) and RL-aware distillation, with checkpoint/resume."""
