"""The two engines that train every method: ``SslTrainer`` (a ``transformers.Trainer``) and ``AccelerateTrainer``
(a raw Accelerate loop), and what they share."""
