# The Python processes of streamcart (workers, the payment gateway, the one-shot `init`) for docker-compose.yml
# and the Helm chart. Settings come from STREAMCART_* variables (streamcart/settings.py).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY streamcart ./streamcart
COPY agents ./agents
COPY schemas ./schemas
COPY tables ./tables
COPY api ./api
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system --uid 10001 --home-dir /var/lib/streamcart --create-home streamcart
# The warehouse sink configurations `streamcart init` applies (STREAMCART_CONNECTORS_DIR).
COPY connectors ./connectors
ENV STREAMCART_HOME=/var/lib/streamcart \
    STREAMCART_CONNECTORS_DIR=/app/connectors \
    STREAMCART_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
USER 10001
VOLUME /var/lib/streamcart
EXPOSE 8080 8090
ENTRYPOINT ["streamcart"]
CMD ["worker", "--index", "0"]
