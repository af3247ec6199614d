# The PTU simulator, for local stacks (docker-compose.yml); never part of a deployment.
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir 'uv>=0.9,<1'
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY orchestrator orchestrator
COPY simulator simulator
RUN uv sync --locked --no-dev --extra demo --no-editable

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 ptu
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
USER ptu
EXPOSE 8081
ENTRYPOINT ["ptu"]
CMD ["simulator", "--host", "0.0.0.0"]
