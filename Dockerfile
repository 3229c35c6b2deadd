# The Python processes of streamcart (workers and the payment gateway) for docker-compose.yml and Helm.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY streamcart ./streamcart
COPY agents ./agents
COPY schemas ./schemas
COPY tables ./tables
COPY api ./api
RUN pip install --no-cache-dir -c constraints.txt .
ENV STREAMCART_HOME=/var/lib/streamcart
EXPOSE 8080 8090
ENTRYPOINT ["streamcart"]
CMD ["worker", "--index", "0"]
