"""Where runs go: the local launcher, SLURM, Ray, multi-host; `job` is what a run's process executes."""
