"""The kernel engine: a tc eBPF relay program generated in Python and loaded with bpf(2).

`asm` and `program` are pure (instructions and map layouts); `bpf` is the system call layer; `engine` holds
`KernelRelay`, which owns the maps, the program and the tcx links.
"""
