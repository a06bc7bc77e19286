#!/bin/bash
# The Multi30k recipes side by side on one GPU: they are small, so ten runs share one card (each run's
# wall time is then longer than it would be alone). Each run tests its best (Transformer: averaged) checkpoint
# on test2016 at the end, into RUNS_DIR/<name>/metrics.json.
#   usage: bash experiments/multi30k_gpu.sh RUNS_DIR [MAX_TIME (DD:HH:MM:SS, default 00:00:05:00)]
#   LNMT_TRAIN: the train command (default lnmt-train); MULTI30K_ROOT: the corpus files.
set -u
runs=${1:?usage: multi30k_gpu.sh RUNS_DIR [MAX_TIME]}
max_time=${2:-00:00:05:00}
train=${LNMT_TRAIN:-lnmt-train}
common=(trainer=gpu trainer.enable_progress_bar=false "trainer.max_time=$max_time" logger=csv)
deen=(data.src_lang=de data.tgt_lang=en)
mkdir -p "$runs"

launch() {  # launch NAME OVERRIDES...: one run in the background, its log in RUNS_DIR/NAME.log
  local name=$1
  shift
  OMP_NUM_THREADS=2 $train "$@" "${common[@]}" "hydra.run.dir=$runs/$name" >"$runs/$name.log" 2>&1 &
}

# the recipes, both directions (the score function was chosen on val by an earlier sweep: concat)
launch attention_ende experiment=multi30k_attention
launch attention_deen experiment=multi30k_attention "${deen[@]}"
launch transformer_ende experiment=multi30k_transformer
launch transformer_deen experiment=multi30k_transformer "${deen[@]}"
launch basic_ende experiment=multi30k_basic
# ablations (experiments/README.md, "Not reached"): LIUM's small batches; the Transformer recipe's post-norm and
# shared embeddings (Wu et al.'s settings) one at a time, checked at convergence
launch attention_small_batch_ende experiment=multi30k_attention data.max_tokens=512 optim.lr=0.0005 \
  trainer.val_check_interval=2000
launch transformer_pre_norm_ende experiment=multi30k_transformer model.norm_first=true
launch transformer_separate_embeddings_ende experiment=multi30k_transformer model.share_embeddings=false
# the attention recipe without input feeding and tied output embeddings (-1.2 / -1.7 val BLEU on one CPU core)
plain=(model.input_feeding=false model.tie_embeddings=false)
launch attention_plain_ende experiment=multi30k_attention "${plain[@]}"
launch attention_plain_deen experiment=multi30k_attention "${plain[@]}" "${deen[@]}"
wait
grep -H -o '"bleu_tok_lc": [0-9.]*' "$runs"/*/metrics.json
