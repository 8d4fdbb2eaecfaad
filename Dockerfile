# Image for docker-compose.yml (web, relay, worker, scheduler, migrate): the package installed
# non-editable, migrations inside it (app/migrations), no development tooling.
FROM python:3.11-slim
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app app
COPY workers workers
COPY alembic alembic
RUN pip install --no-cache-dir . && useradd --system memory
USER memory
EXPOSE 8000
CMD ["memctl", "web"]
