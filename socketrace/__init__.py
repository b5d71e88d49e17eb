"""socketrace: an eBPF tracer of the kernel functions that handle sockets."""

__version__ = "0.2.0"
