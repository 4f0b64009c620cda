"""A run's life in its workdir: the loop, its Orbax checkpoints and records, the workdir
lock, the hang watchdog, the log file, pre-flight checks, the metrics writer."""
