# Vigil in a container.
#
# NOT TESTED HERE: the machine Vigil is developed and tested on has no container
# engine, so this file has never been built. It is a starting point; check it
# before relying on it. The tested ways to run Vigil are `pip install .` and
# deploy/vigil.service (see docs/admin-guide.md).
#
#   docker build -t vigil .
#   docker run -d --name vigil -p 127.0.0.1:8080:8080 \
#     -v /etc/vigil:/config:ro -v vigil-data:/data --env-file /etc/vigil/vigil.env vigil
#
# /config holds bot.toml and rules/ (read-only); /data is the data directory
# (database, hash lists, evidence): in bot.toml set host = "0.0.0.0",
# data_dir = "/data" and rules_dir = "/config/rules". Secrets come from the
# environment (--env-file), never from the image. `docker stop` sends SIGTERM and
# Vigil drains; `docker kill -s HUP vigil` reloads the rules.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY adapters ./adapters
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin vigil \
    && install -d -o vigil -g vigil -m 0750 /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER vigil
WORKDIR /data
ENV PYTHONUNBUFFERED=1
EXPOSE 8080
VOLUME ["/data"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=2m \
    CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"
ENTRYPOINT ["vigil"]
CMD ["run", "-c", "/config/bot.toml"]
