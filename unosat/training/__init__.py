"""Training: the LightningModule, schedulers, callbacks, loggers, and ``train.py``'s run."""
