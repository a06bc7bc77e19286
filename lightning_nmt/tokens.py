"""The ids of the special tokens, fixed in every vocabulary (`lightning_nmt.data.tokenizer` trains sentencepiece
with them): the models and the search read them from here, without importing sentencepiece."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
