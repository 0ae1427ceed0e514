#!/bin/sh
# The one way the service is started: `make run` and the Docker image both run this.
# HOST, PORT and WORKERS come from the environment. uvicorn's own proxy-header handling
# is off: the app believes X-Forwarded-For only from FORWARDED_ALLOW_IPS.
exec fastapi run app/main.py \
  --host "${HOST:-0.0.0.0}" \
  --port "${PORT:-8000}" \
  --workers "${WORKERS:-1}" \
  --no-proxy-headers
