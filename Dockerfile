# One image for every service: worker, beat and flower differ only in their command.
FROM python:3.11-slim

# bubblewrap + slirp4netns: the local sandbox (isolated process, outbound-only network);
# tzdata: the time zones competitions are scheduled in.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap slirp4netns tzdata \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY dispatcher ./dispatcher
COPY candidates ./candidates
COPY forge.toml ./
# Editable: forge.toml and the candidate manifest resolve next to the code, in /app.
RUN pip install -e .

# An unprivileged user: bwrap builds candidate sandboxes in user namespaces. The /data
# directories exist here so the named volumes mounted on them start owned by that user.
RUN useradd --create-home --uid 1000 forge \
    && mkdir -p /data/artifacts /data/beat /data/flower \
    && chown -R forge:forge /data
USER forge

ENV FORGE_ARTIFACTS_DIR=/data/artifacts \
    FORGE_COMPETITIONS=/app/forge.toml \
    FORGE_BEAT_SCHEDULE=/data/beat/celerybeat-schedule

CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
