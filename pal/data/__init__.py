"""Audio-text data: the training/evaluation manifest format and its validation, converters from public datasets,
and the demo dataset of real recorded sounds. Knows audio files and text, not models."""
