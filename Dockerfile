# GPU image: Python 3.11, the torch release the test suite runs on (the Makefile's TORCH; from PyPI, a CUDA
# build on x86_64 Linux), lightning-nmt installed, `lnmt-train` as the entry point.
#   docker build -t lightning-nmt .
#   docker run --gpus all --rm -v $PWD/outputs:/work/outputs lightning-nmt trainer=gpu
#   docker run --gpus all --rm -v $PWD/outputs:/work/outputs -v /data/multi30k:/data/multi30k \
#       lightning-nmt trainer=ddp data=multi30k data.root=/data/multi30k
FROM python:3.11-slim

ARG TORCH=torch==2.13.0
ENV PYTHONUNBUFFERED=1 LNMT_CACHE_DIR=/work/.cache/lightning_nmt
WORKDIR /opt/lightning-nmt
# torch first, so the package's own range (torch>=2.3) keeps it
RUN pip install --no-cache-dir "$TORCH"
COPY pyproject.toml README.md ./
COPY lightning_nmt ./lightning_nmt
COPY hydra_plugins ./hydra_plugins
COPY conf ./conf
RUN pip install --no-cache-dir -e .

WORKDIR /work
ENTRYPOINT ["lnmt-train"]
