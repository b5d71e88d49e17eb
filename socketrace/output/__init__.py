"""Formatting of events: pure functions of decoded records, no BPF, no globals."""
