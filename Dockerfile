# CPU image running the recognition service with the bundled model.  It leaves out the
# training code (training/): `spikeear train` and the other training commands say that they
# need the full install.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 libportaudio2 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/spikeear
COPY pyproject.toml README.md ./
COPY app app
COPY models models
COPY audio_frontend audio_frontend
# TORCH_INDEX: a package index serving CPU-only torch wheels keeps the image small
# (PyPI's default torch wheel carries CUDA libraries, unused here).
ARG TORCH_INDEX=""
RUN if [ -n "$TORCH_INDEX" ]; then \
        pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX"; \
    fi \
    && pip install --no-cache-dir .

ENV NUMBA_CACHE_DIR=/tmp/numba
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["spikeear", "serve", "--host", "0.0.0.0", "--port", "8000"]
