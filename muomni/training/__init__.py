"""Training: the loop (trainer), precision, optimizer and schedule, loss, checkpoints and resume.

``from muomni.training.trainer import Trainer`` (or ``muomni.Trainer``) is the entry point; this package
imports nothing eagerly, so ``muomni.training.checkpoint`` stays light for inference.
"""
