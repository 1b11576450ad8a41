"""Metrics per task, each through a well-kept library where one exists, each with a bootstrap 95% interval.

    caption   CIDEr-D, BLEU-4, METEOR, ROUGE-L (pycocoevalcap; Java), SPICE/SPIDEr when CoreNLP is present
    classify  accuracy (and mAP for multi-label sets) after mapping the answer to the nearest label (MiniLM)
    qa        normalised exact match (yes/no, counts, one word, MMAR-style multiple choice); unparsed = wrong
    asr       WER after Whisper's English normaliser (jiwer)
"""
