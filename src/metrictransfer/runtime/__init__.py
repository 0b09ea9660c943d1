"""What every part running models needs, below the methods and the training loop: the device
(:mod:`~metrictransfer.runtime.device`), torch.distributed helpers
(:mod:`~metrictransfer.runtime.distributed`) and checkpoint files (:mod:`~metrictransfer.runtime.checkpoint`).

Its modules are imported one by one (nothing here): the command line resolves a device without loading models.
"""
