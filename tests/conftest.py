import os

# Tests share two cores with other work; one intra-op thread per test process keeps them predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
