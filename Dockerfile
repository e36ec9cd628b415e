# fraudstream on Google Cloud Dataflow: one image, two roles.
#
#   * SDK worker (Runner v2, GPU): `--sdk_container_image=IMAGE`. Dataflow runs the ENTRYPOINT,
#     Beam's /opt/apache/beam/boot, which starts the SDK harness with this image's Python.
#   * Flex Template launcher: `gcloud dataflow flex-template build --image IMAGE`. The launcher
#     VM runs /opt/google/dataflow/python_template_launcher (copied below), which runs
#     FLEX_TEMPLATE_PYTHON_PY_FILE with the template parameters as `--name=value` flags.
#
# Pattern: Beam's "custom containers" and Dataflow's "GPU with Dataflow" / "custom base image"
# guides: any base image + the Beam SDK installed + /opt/apache/beam copied from the Beam image
# of the SAME Beam and Python versions + ENTRYPOINT ["/opt/apache/beam/boot"].
# tests/streaming/test_deploy_files.py checks the versions below against pyproject.toml and
# uv.lock, and the Makefile's uv version.
#
# Build (from the repo root; BuildKit not required), push, and build the template: see
# docs/deploy.md, which also lists the GCP resources and roles. In short:
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/fraudstream:TAG .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/fraudstream:TAG
#   gcloud dataflow flex-template build gs://BUCKET/fraudstream/templates/fraudstream.json \
#     --image REGION-docker.pkg.dev/PROJECT/REPO/fraudstream:TAG --sdk-language PYTHON \
#     --metadata-file streaming/job/flex_template_metadata.json
#
# GPU: XGBoost's manylinux wheel ships its CUDA code (NCCL comes from the locked
# nvidia-nccl-cu12 wheel); the `gpu` extra adds CuPy, through which a batch reaches the GPU in
# one copy (XGBoost's own copy of host rows is about 5x slower at 64 k rows); the host driver
# comes from Dataflow's `install-nvidia-driver` service option. The CUDA image's
# NVIDIA_REQUIRE_CUDA must be satisfied by that driver: 12.4 needs a >= 550 driver (older 12.x
# drivers work through minor-version compatibility).
# Override with --build-arg CUDA_IMAGE=...; a `-base-` tag is much smaller than `-runtime-`
# and is enough as long as nothing links cuBLAS/cuDNN dynamically.
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04

# The Beam SDK harness boot entrypoint: same Beam version as uv.lock, same Python minor.
FROM apache/beam_python3.11_sdk:2.77.0 AS beam
# The Flex Template launcher binary, for the same Python minor. Pin a dated tag in production.
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS launcher
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# ---- build: Python 3.11 (uv-managed) + the locked runtime dependencies + the project ----
FROM ${CUDA_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON=3.11 \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /template
# Dependencies first (their own layer): only the lock and pyproject decide them.
COPY pyproject.toml uv.lock ./
RUN uv python install 3.11 \
 && uv sync --frozen --no-dev --extra gpu --no-install-project
# The project: editable, so the sources stay in /template (streaming/store/names.py finds
# feature_repo/ next to its package; a wheel install would lose it). README.md is the
# package's readme, needed to build its metadata.
COPY README.md ./
COPY features ./features
COPY streaming ./streaming
COPY training ./training
COPY feature_repo ./feature_repo
# pip: Beam's boot pip-installs staged packages, if a job stages any (none by default).
RUN uv sync --frozen --no-dev --extra gpu \
 && uv pip install --python /opt/venv/bin/python pip \
 && /opt/venv/bin/python -m compileall -q features streaming training \
 && /opt/venv/bin/python -c "import apache_beam, cupy, xgboost, numba, streaming.job.pipeline"
# The jar of Beam's Java expansion service that expands WriteToBigQuery's Storage Write API
# (--scored_table) when the launcher builds the job: resolved and fetched by the installed Beam
# (its own version, from Maven Central) now, so a launch downloads nothing. The final image
# points Beam at it with BEAM_SERVICE_OVERRIDES (flex_main applies it while building).
RUN /opt/venv/bin/python -c "from apache_beam.utils.subprocess_server import JavaJarServer as J; print(J.local_jar(J.path_to_beam_jar('sdks:java:io:google-cloud-platform:expansion-service:build'), cache_dir='/opt/beam-jars'))"

# ---- final image: no uv, no build caches, no dev extras, no tests, no data ----
# No model either: the workers read the registry from --model_dir (gs://BUCKET/models), and
# follow its `current` pointer, so a promoted model reaches a running job without a new image.
FROM ${CUDA_IMAGE}
# A Java runtime for that expansion service: only the launcher runs it, at launch (the workers
# run the expanded BigQuery write in Dataflow's Java SDK container, not in this image).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
COPY --from=build /template /template
COPY --from=build /opt/beam-jars /opt/beam-jars
COPY --from=beam /opt/apache/beam /opt/apache/beam
COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
# RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT: Beam's boot otherwise creates a fresh venv on
# start-up, which would not see the packages of /opt/venv. The Flex Template needs no
# FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE / _SETUP_FILE: everything is installed here, and a
# setup file would make every worker pip-install the project again at start-up. Pass
# `sdk_container_image=` this same image when running the template. BEAM_SERVICE_OVERRIDES
# names the expansion service's jar fetched above (its version is Beam's: the tests check it).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1 \
    FLEX_TEMPLATE_PYTHON_PY_FILE=/template/streaming/job/flex_main.py \
    BEAM_SERVICE_OVERRIDES='{"sdks:java:io:google-cloud-platform:expansion-service:build":"/opt/beam-jars/beam-sdks-java-io-google-cloud-platform-expansion-service-2.77.0.jar"}' \
    NUMBA_CACHE_DIR=/tmp/numba_cache \
    PYTHONUNBUFFERED=1
WORKDIR /template
ENTRYPOINT ["/opt/apache/beam/boot"]
