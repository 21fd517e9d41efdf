"""Triton kernels, installed as ``pydebias.kernels`` (see kernels/README.md).

Each module holds one kernel and its launcher; the launcher takes torch tensors on a
CUDA device, or CPU tensors when ``TRITON_INTERPRET=1`` was set before triton was
imported (how the tests run them on machines without a GPU).
"""
