"""spikeear's benchmarks, each a module run from the repository root as
``python -m benchmarks.NAME [--help]``; what they share is in :mod:`benchmarks.common`."""
