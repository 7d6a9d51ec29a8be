# nanoclaw in a container. Everything it keeps lives in the mounted home folder:
#   docker build -t nanoclaw .
#   docker run --rm -it -v ~/.nanoclaw:/root/.nanoclaw nanoclaw onboard
#   docker run -d --name nanoclaw --restart unless-stopped -v ~/.nanoclaw:/root/.nanoclaw nanoclaw gateway
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NANOCLAW_HOME=/root/.nanoclaw

WORKDIR /app

# bubblewrap: the sandbox around the exec tool. Docker's default seccomp profile forbids the user
# namespaces it needs; then exec refuses with a line naming the fix (README, "Security").
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# Byte-code compiled once here, so a slow board does not compile on every start. /root is opened
# up so that the image also runs with --user "$(id -u):$(id -g)" (files on the host stay yours).
RUN python -m compileall -q lib nanoclaw.py && chmod 755 /root

EXPOSE 18790
ENTRYPOINT ["python", "nanoclaw.py"]
CMD ["status"]
