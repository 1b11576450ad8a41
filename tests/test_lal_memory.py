"""Training keeps only each audio layer's keys/values and recomputes the rest of the audio branch in backward."""

from __future__ import annotations

import torch
from conftest import build_inputs, random_audio, random_texts, tiny_pal


def _saved_bytes_and_grads(recompute: bool):
    model, _ = tiny_pal("lal", lal_config={"start_layer": 0, "recompute_audio": recompute})
    model.train()
    texts = random_texts([10, 12], seed=9)
    audio = random_audio(model.config, [40, 25], seed=9)  # many audio tokens, so the audio branch dominates
    batch = build_inputs(model, texts, audio, padding_side="right")
    saved, weights = {}, {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):  # activations only: weights are saved by reference and cost nothing extra
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch, audio=audio, labels=batch["input_ids"]).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return sum(saved.values()), loss.item(), grads


def test_recomputed_audio_branch_gives_the_same_gradients_for_less_saved_memory():
    kept, kept_loss, kept_grads = _saved_bytes_and_grads(recompute=False)
    recomputed, loss, grads = _saved_bytes_and_grads(recompute=True)
    assert loss == kept_loss and grads.keys() == kept_grads.keys()
    assert any(name.startswith("lal.") for name in grads)
    for name, grad in grads.items():
        # reorder: the recomputed branch runs the same ops; only backward's accumulation order moves (≤ 1e-7 measured)
        torch.testing.assert_close(grad, kept_grads[name], atol=1e-6, rtol=1e-5, msg=name)
    assert recomputed < 0.8 * kept, (recomputed, kept)
