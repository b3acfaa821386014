"""`python -m sparsebench` (and `torchrun -m sparsebench run ...`)."""

from sparsebench.cli import main

main()
