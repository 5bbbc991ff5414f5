"""Prometheus metrics of one service instance (own registry, so tests can make many).

With ``spikeear serve --workers N`` every worker process counts its own streams;
the server then runs prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``
set before the workers start), and ``/metrics`` on any worker reports the sums
over all of them.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
LIMITS = (
    "max_streams",
    "idle_timeout_s",
    "max_stream_s",
    "max_audio_s",
    "max_batch_jobs",
    "max_upload_bytes",
    "max_messages_per_audio_s",  # not a flag: app/routers/common.py
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.active_streams = Gauge(
            "spikeear_active_streams",
            "Open streaming connections",
            ["endpoint"],
            registry=self.registry,
            multiprocess_mode="livesum",  # with several workers: summed over live ones
        )
        self.audio_seconds = Counter(
            "spikeear_audio_seconds",
            "Seconds of audio received",
            ["endpoint"],
            registry=self.registry,
        )
        self.partial_latency = Histogram(
            "spikeear_partial_latency_seconds",
            "From the arrival of an audio chunk to the partial it causes",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=self.registry,
        )
        # Where streaming latency goes: the cochlea takes all waiting audio of all streams
        # in one call, the network steps all streams with a bin ready in one call.
        self.batch_seconds = Histogram(
            "spikeear_batch_seconds",
            "Duration of one batched cochlea call or network step",
            ["stage"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
            registry=self.registry,
        )
        self.batch_streams = Histogram(
            "spikeear_batch_streams",
            "Streams served by one batched cochlea call or network step",
            ["stage"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 200),
            registry=self.registry,
        )
        self.transcribe_seconds = Histogram(
            "spikeear_transcribe_seconds",
            "Batch transcription wall time",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=self.registry,
        )
        self.words = Counter(
            "spikeear_words", "Final words emitted", ["endpoint"], registry=self.registry
        )
        self.errors = Counter(
            "spikeear_errors",
            "Rejected requests and messages by kind",
            ["kind"],
            registry=self.registry,
        )

        # One label per limit flag (its settings name), each listed from the start so a
        # dashboard sees 0 rather than no series until the first hit.
        self.limit_hits = Counter(
            "spikeear_limit_hits",
            "Streams and requests refused or ended by a configured limit",
            ["limit"],
            registry=self.registry,
        )
        for limit in LIMITS:
            self.limit_hits.labels(limit)

    def observe_batch(self, stage: str, seconds: float, streams: int) -> None:
        self.batch_seconds.labels(stage).observe(seconds)
        self.batch_streams.labels(stage).observe(streams)

    def exposition(self) -> bytes:
        """The text ``/metrics`` serves: this process's metrics, or in multiprocess
        mode those of all worker processes together."""
        path = os.environ.get(MULTIPROCESS_DIR)
        if not path:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        return generate_latest(registry)

    @staticmethod
    def process_exiting() -> None:
        """In multiprocess mode: drop this process's live gauges from the sums."""
        if os.environ.get(MULTIPROCESS_DIR):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())
