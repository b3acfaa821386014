"""Every default a user can change, in one place: the command line, the Python API, the grid request, the
run config and the run settings all read them here (plain values, so the command line starts without torch)."""

PRESET = "quick"
SG = 0.9
SD = 0.5
SEED = 0
SCOPE = "conv"  # of a method that declares none (Method.scope)
DISTRIBUTION = "erk"
OPT_STATE = "dense"  # Adam's state at masked weights (sparsebench.sparse.opt_state)
KERNELS = "dense"
PRECISION = "fp32"
THREADS = 1
METRICS = ("fid", "is")
DEVICE = "cpu"
CHECKPOINT_EVERY = 500  # G steps
EXECUTOR = "local"
JOBS = 1
