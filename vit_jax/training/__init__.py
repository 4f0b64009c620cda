"""What one compiled train step is made of: train state, the step, optimizers and
schedules, parameter groups, EMA, distillation, losses (docs/architecture.md)."""
