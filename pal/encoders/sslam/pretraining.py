"""SSLAM / EAT pre-training objective: EMA teacher, multi-mask student, CNN decoder, frame, utterance and SRL losses.

Stage 1 (EAT, arXiv 2401.03497; docs/design.md#stage-1-eat): the student sees C masked clones of each clip; its decoder
regresses the teacher's frame targets at masked patches, and its CLS regresses the teacher's utterance target.
Stage 2 (SSLAM, arXiv 2506.12222; docs/design.md#stage-2-mixtures-and-source-retention): the batch is doubled with
partial mixtures sharing the clean view's masks; the mixed half also regresses the source retention targets
(`source_retention.py`).

Targets (docs/design.md#teacher-and-targets): Tgt_K = LN(mean over the top K layers of IN(FFN tap_l)), IN over tokens,
LN over channels, both without affine and eps 1e-5, in float32. Loss primitive: ℓ(p, y) = (p − y)² / √D.
Normalisation (docs/design.md#losses): the frame loss and the SRL are sums over masked patches divided by S (all masked
patches of all student sequences); the SRL carries the official ×2; the utterance loss is a SUM over student sequences.

Notation: B clips, V views (1 or 2), C clones, n = V·B·C student sequences, N patches, D width.
Student sequence order: n = v·B·C + i·C + k (view, clip, clone), as the official code lays them out.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch import nn

from pal.common.typed_config import bounded

from .decoder import Decoder2d
from .masking import inverse_block_mask
from .model import SSLAMConfig, SSLAMEncoder
from .source_retention import draw_window_starts, drop_unmixed, mixed_patch_rows, mixed_positions, partial_mixture, srl_targets


@dataclass
class ObjectiveConfig:
    """Every quantity of the objective. Defaults: SSLAM stage 2, faithful to the official code."""

    stage: int = 2
    clones: int = bounded(8, ge=1)  # masks per clip (per view in stage 2); stage 1 uses 16
    mask_prob: float = bounded(0.8, gt=0, le=1)
    mask_prob_adjust: float = bounded(0.07, ge=0)
    mask_block: int = bounded(5, ge=1)
    top_k_layers: int = bounded(12, ge=1)  # frame targets average the top K layers (all layers if the model is shallower)
    # Official stage 2 builds the utterance target from the last layer only ("last"); stage 1 and the paper
    # description use the same top-K average as the frame target ("top_k").
    utterance_target: str = "last"
    # Official: the utterance loss is a sum over student sequences ("sum"); "mean" divides it by their number.
    utterance_reduction: str = "sum"
    utterance_weight: float = bounded(1.0, ge=0)
    frame_weight: float = bounded(1.0, ge=0)
    srl_weight: float = bounded(2.0, ge=0)  # the official ×2 makes the SRL a mean over the mixed half's masked patches
    mix_window: int = bounded(240, ge=1)  # frames per clean window in the mixtures
    decoder_noise_std: float = bounded(0.01, ge=0)
    ema_decay: float = bounded(0.9998, ge=0, le=1)
    ema_end_decay: float = bounded(0.99999, ge=0, le=1)
    ema_anneal_steps: int = bounded(100000, ge=0)

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage = {self.stage}: expected 1 (EAT) or 2 (SSLAM).")
        if self.utterance_target not in ("last", "top_k"):
            raise ValueError(f"utterance_target = {self.utterance_target!r}: expected 'last' or 'top_k'.")
        if self.utterance_reduction not in ("sum", "mean"):
            raise ValueError(f"utterance_reduction = {self.utterance_reduction!r}: expected 'sum' or 'mean'.")


def ema_decay_at(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Linear ramp of the teacher's decay from `start` to `end` over `anneal_steps` updates, then `end`."""
    if step >= anneal_steps:
        return end
    return end - (end - start) * (1 - step / anneal_steps)


def make_targets(taps: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """Tgt_K: taps (each [B, T, D], CLS removed) → LN(mean_l IN(tap_l)) over the last K [B, T, D], float32."""
    chosen = taps[-top_k:]
    normed = [nn.functional.instance_norm(t.float().transpose(1, 2), eps=1e-5).transpose(1, 2) for t in chosen]
    mean = torch.stack(normed).mean(0)
    return nn.functional.layer_norm(mean, mean.shape[-1:], eps=1e-5)


def d2v_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Element-wise (p − y)² / √D (data2vec 2.0 with loss_beta = 0)."""
    return (pred.float() - target).pow(2) / math.sqrt(pred.shape[-1])


@dataclass
class Draws:
    """The random draws of one step; None fields are drawn. Injected to reproduce a recorded step exactly."""

    masks: torch.Tensor | None = None  # [B·C, N] bool, True = masked; row i·C + k is clip i, clone k
    window_starts: tuple[int, int] | None = None  # clean-window start frames (stage 2)
    noise: torch.Tensor | None = None  # [n, N_masked, D]: decoder noise at each sequence's masked patches, ascending


class EMATeacher:
    """The EMA teacher (docs/design.md#teacher-and-targets): a frozen float32 copy of the encoder, without the decoder.

    Kept outside the trained module, so DeepSpeed neither partitions nor casts it (the official EMA is float32 too).
    """

    def __init__(self, encoder: SSLAMEncoder, objective: ObjectiveConfig):
        self.encoder = SSLAMEncoder(encoder.config)
        self.objective = objective
        self.load_from(encoder)

    def load_from(self, encoder: SSLAMEncoder) -> None:
        """Teacher := the given encoder's weights (stage 1 starts this way)."""
        state = {k: v.detach().float() for k, v in encoder.state_dict().items() if ".decoder." not in k}
        self.encoder.load_state_dict(state)
        self.encoder.float().eval().requires_grad_(False)

    def to(self, device) -> EMATeacher:
        self.encoder.to(device)
        return self

    @torch.no_grad()
    def update(self, student: SSLAMEncoder, step: int) -> float:
        """θ_T ← d·θ_T + (1 − d)·θ_S after optimizer step `step`; frozen tensors (the positions) are copied."""
        o = self.objective
        decay = ema_decay_at(step, o.ema_decay, o.ema_end_decay, o.ema_anneal_steps)
        source = dict(student.named_parameters())
        for name, param in self.encoder.named_parameters():
            if source[name].requires_grad:
                param.mul_(decay).add_(source[name].detach().float(), alpha=1 - decay)
            else:
                param.copy_(source[name])
        return decay

    @torch.no_grad()
    def __call__(self, spec: torch.Tensor):
        return self.encoder(spec.float())


class SSLAMPretrainer(nn.Module):
    """The trained part: the student encoder with its decoder. The teacher is passed to `forward`."""

    def __init__(self, encoder_config: SSLAMConfig, objective: ObjectiveConfig | None = None):
        super().__init__()
        self.objective = objective or ObjectiveConfig()
        self.student = SSLAMEncoder(encoder_config)
        self.student.image.decoder = Decoder2d(encoder_config)  # the released checkpoints' key names

    def draw(self, batch: int, num_frames: int, rng: random.Random, generator: torch.Generator | None) -> Draws:
        c = self.student.config
        grid = (num_frames // c.patch_size, c.freq_patches)
        o = self.objective
        masks = inverse_block_mask(batch * o.clones, grid, o.mask_prob, o.mask_prob_adjust, o.mask_block, generator)
        starts = draw_window_starts(num_frames, o.mix_window, c.patch_size, rng) if o.stage == 2 else None
        return Draws(masks=masks, window_starts=starts)

    def forward(self, spec: torch.Tensor, draws: Draws, teacher: EMATeacher) -> dict[str, torch.Tensor]:
        """spec: normalised log-mel [B, T, M] → losses (normalised as the official trainer optimises them) and the
        intermediates the parity test compares."""
        o, c = self.objective, self.student.config
        batch, frames = spec.shape[0], spec.shape[1]
        time_patches, clones = frames // c.patch_size, o.clones
        out = {}

        # Views: clean, and in stage 2 the partial mixtures sharing the clean masks.
        if o.stage == 2:
            if batch < 2:
                raise ValueError("stage 2 mixes clip i with clip i−1 of the batch: use batches of at least 2 clips.")
            mixed = partial_mixture(spec, draws.window_starts, o.mix_window)
            views, masks = torch.cat([spec, mixed]), torch.cat([draws.masks, draws.masks])
            out["mixed_spectrogram"] = mixed
        else:
            views, masks = spec, draws.masks
        masks = masks.to(spec.device)
        n_seq, n_patches = masks.shape

        # Student: visible tokens only (MAE-style), then the decoder with noise at masked patches.
        dtype = self.student.image.local_encoder.proj.weight.dtype  # bf16 under DeepSpeed bf16
        tokens = self.student.embed(views.to(dtype)).repeat_interleave(clones, dim=0)  # [n, N, D]
        visible = tokens[~masks].view(n_seq, -1, tokens.shape[-1])  # ascending patch order per row
        encoded = self.student.encode_tokens(visible).last_hidden_state  # [n, 1 + N_vis, D]
        noise = draws.noise
        if noise is None:
            noise = torch.randn(n_seq, int(masks[0].sum()), tokens.shape[-1], device=spec.device) * o.decoder_noise_std
        noise = noise.to(device=spec.device)
        decoder_in = tokens.new_zeros(tokens.shape)
        decoder_in[~masks] = encoded[:, 1:].reshape(-1, tokens.shape[-1])
        decoder_in[masks] = noise.reshape(-1, tokens.shape[-1]).to(decoder_in.dtype)
        pred = self.student.image.decoder(decoder_in)  # [n, N, D]
        cls = encoded[:, 0]
        out.update(student_cls=cls, student_pred_masked=pred[masks].view(n_seq, -1, pred.shape[-1]))

        # Teacher: targets on the full (unmasked) views, and for stage 2 the foreign sources alone.
        with torch.no_grad():
            taps = [t[:, 1:] for t in teacher(views).layer_results]
            frame_target = make_targets(taps, o.top_k_layers)  # [V·B, N, D]
            utt_layers = 1 if o.utterance_target == "last" else o.top_k_layers
            utt_target = make_targets(taps, utt_layers).mean(1)  # [V·B, D]
            out.update(target_frame=frame_target, target_utterance=utt_target)
            if o.stage == 2:
                rows = mixed_patch_rows(draws.window_starts, o.mix_window, c.patch_size, time_patches)
                positions = mixed_positions(rows, c.freq_patches).to(spec.device)
                t_enc = teacher.encoder
                dropped = drop_unmixed(t_enc.contextualize(t_enc.embed(spec.float())), positions)
                foreign_taps = [t[:, 1:] for t in t_enc.run_blocks(dropped).layer_results]
                foreign = make_targets(foreign_taps, o.top_k_layers)  # [B, N_mixed, D]
                srl = srl_targets(frame_target[:batch], foreign, positions)
                out.update(teacher_dropped_input=dropped, target_foreign=foreign, target_srl=srl)

        # Losses (docs/design.md#losses): sums over masked patches / S; the utterance term summed over sequences.
        sample_size = masks.sum()
        rep = lambda t: t.repeat_interleave(clones, dim=0)  # noqa: E731  one target row per clone
        frame_rows = d2v_loss(pred[masks], rep(frame_target)[masks]).sum(-1)
        utt_rows = d2v_loss(cls, rep(utt_target)).sum(-1)
        out["loss_rows_eat_patch"], out["loss_rows_eat_cls"] = frame_rows, utt_rows
        out["loss_frame"] = o.frame_weight * frame_rows.sum() / sample_size
        utt = utt_rows.sum() if o.utterance_reduction == "sum" else utt_rows.mean()
        out["loss_utterance"] = o.utterance_weight * utt
        total = out["loss_frame"] + out["loss_utterance"]
        if o.stage == 2:
            half = n_seq // 2
            mix_masks = masks[half:]
            srl_rows = o.srl_weight * d2v_loss(pred[half:][mix_masks], rep(srl)[mix_masks]).sum(-1)
            out["loss_rows_mix_patch"] = srl_rows
            out["loss_srl"] = srl_rows.sum() / sample_size
            total = total + out["loss_srl"]
        out["loss"] = total
        out["sample_size"] = sample_size
        return out


def load_pretraining_weights(model: SSLAMPretrainer, teacher: EMATeacher, state: dict) -> None:
    """Student keys (with decoder) and `_ema.`-prefixed teacher keys, as in fairseq checkpoints and the fixture.

    The teacher's frozen positional table may be absent (the official EMA does not store it): the student's is
    used. A checkpoint with no teacher keys starts the teacher as a copy of the student.
    """
    student = {k: v.float() for k, v in state.items() if not k.startswith("_ema.")}
    ema = {k[len("_ema."):]: v.float() for k, v in state.items() if k.startswith("_ema.")}
    model.student.load_state_dict(student)
    if not ema:
        teacher.load_from(model.student)
        return
    positions = "modality_encoders.IMAGE.fixed_positional_encoder.positions"
    ema.setdefault(positions, student[positions])
    teacher.encoder.load_state_dict(ema)
