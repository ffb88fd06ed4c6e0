"""Thin wrappers over Linux system interfaces (AF_PACKET, capabilities, prctl, batched syscalls)."""
