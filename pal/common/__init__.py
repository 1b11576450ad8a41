"""The bottom layer, shared by every package: typed dataclass configs from YAML, atomic writes with clear disk
errors, the JSONL line reader behind every manifest, and content hashes of files. No torch, nothing of the model."""
