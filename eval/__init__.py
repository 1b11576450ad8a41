"""Inference tasks, metrics, connector comparison and the efficiency benchmark."""
