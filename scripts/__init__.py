"""What users run by hand, outside the installed package: the benchmarks
(``python -m scripts.bench``), the SLURM batch file and the torchrun launcher."""
