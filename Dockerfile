# Image for docker-compose.yml (web, relay, worker, scheduler, migrate).
FROM python:3.11-slim
WORKDIR /srv
COPY pyproject.toml README.md alembic.ini Procfile ./
COPY app app
COPY workers workers
COPY alembic alembic
RUN pip install --no-cache-dir . && useradd --system memory
USER memory
EXPOSE 8000
CMD ["memctl", "web"]
