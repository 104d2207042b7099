# The image TFX components run in on Kubeflow Pipelines / Vertex AI Pipelines.
# Same pins and the same two-step recipe as the local install (scripts/install.sh reads the same
# requirements/ files; tests/test_foundation.py checks that both stay in step).
#   docker build -t cxr-tfp-pipeline:0.1.0 .
FROM python:3.11-slim

# importing tfx flips TensorFlow to legacy Keras 2; the model is Keras 3 (TFP layers need it).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 KERAS_BACKEND=tensorflow \
    TF_USE_LEGACY_KERAS=0

WORKDIR /pipeline
COPY requirements/ requirements/

# Step 1: the resolvable stack, every version pinned by requirements/constraints.txt.
RUN python -m pip install --no-cache-dir "pip==25.3" \
 && python -m pip install --no-cache-dir -c requirements/constraints.txt \
        -r requirements/base.txt -r requirements/beam.txt -r requirements/tfx.txt \
        -r requirements/serving.txt -r requirements/kfp.txt
# Step 2: tfx & co. without their unresolvable pins (ml-metadata/TFDV >= 1.21 have no cp311 wheels).
RUN python -m pip install --no-cache-dir --no-deps -r requirements/nodeps.txt

# Step 3: the package itself, plus the pipeline module files the components import.
COPY setup.py README.md ./
COPY cxr_tfp/ cxr_tfp/
COPY pipeline/ pipeline/
COPY configs/ configs/
RUN python -m pip install --no-cache-dir --no-deps . \
 && python -c "from tfx import v1; import cxr_tfp, tensorflow_probability, keras_cv, apache_beam, pydicom"

# TFX's Kubeflow V2 container entrypoint is supplied by the compiled pipeline spec.
ENV PYTHONPATH=/pipeline
