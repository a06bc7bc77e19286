# GPU image: CUDA PyTorch base, lightning-nmt installed, `lnmt-train` as the entry point.
#   docker build -t lightning-nmt .
#   docker run --gpus all --rm -v $PWD/outputs:/work/outputs lightning-nmt trainer=gpu
#   docker run --gpus all --rm -v $PWD/outputs:/work/outputs -v /data/multi30k:/data/multi30k \
#       lightning-nmt trainer=ddp data=multi30k data.root=/data/multi30k
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 LNMT_CACHE_DIR=/work/.cache/lightning_nmt
WORKDIR /opt/lightning-nmt
COPY pyproject.toml README.md ./
COPY lightning_nmt ./lightning_nmt
COPY conf ./conf
# The base image's torch satisfies torch>=2.3, so pip keeps its CUDA build.
RUN pip install --no-cache-dir -e .

WORKDIR /work
ENTRYPOINT ["lnmt-train"]
