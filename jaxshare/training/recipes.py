"""Recipes: what one training run does to its model, apart from the loop every run shares.

A recipe says how the starting params are made (tie first, attach adapters), which leaves train
and which stay frozen, the loss of a micro-batch, any extra term on the weights, what the step
takes besides the batch (a teacher), and whether the end of the run ties pairs. `Trainer` is the
generic loop (data, optimizer, mesh, checkpoints, preemption, metrics, evaluation); it reads the
recipe named by the config's `mode`:

    plain        cross-entropy; with ratio > 0 the pairs are tied at the end (the control)
    postshare    cross-entropy + gamma * pairwise L2 penalty, then tie (docs/methods.md §1)
    direct+post  tie first (DirectShare, data-aware with keep=data / correct), train the banks
    heal         distill from the dense teacher (KD over the full vocabulary, optionally CE and a
                 hidden-state term); trains all, only compressed leaves, or LoRA adapters
    inheritune   a sequence of plain runs, one per growth stage (training/stages.py)

`describe(name)` answers, for docs and `result.json`, what trains, what is frozen and the loss.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxshare.core.bank import trainable_mask
from jaxshare.core.compressed import is_compressed
from jaxshare.core.dtypes import as_dtype
from jaxshare.lora.leaf import attach, is_lora, lora_paths
from jaxshare.training.config import TRAINS  # noqa: F401  (re-exported: the recipes' vocabulary)
from jaxshare.training.distill import KDLoss, kd_terms
from jaxshare.training.step import make_step, make_train_step



class Recipe:
    """The plain recipe; the others override what differs."""
    name = "plain"
    ties_first = False  # the pairs are tied before training (their banks train)
    penalize = False  # gamma * L_w joins the loss
    teacher = False  # the step takes a teacher's params

    def describe(self, tc) -> dict:
        return {"recipe": self.name, "trains": "every floating leaf no kind freezes",
                "frozen": "bank indices, quantization codes and zero points",
                "loss": "next-token cross-entropy" + (" + gamma * pairwise L2 (logged only)" if tc.ratio else "")}

    def start(self, tc, params, cfg):
        """The params training starts from (after any tie the trainer did)."""
        return params

    def mask(self, tc, params):
        """True on the leaves that train (never one a kind declares frozen)."""
        return trainable_mask(params)

    def step(self, tc, cfg, tx, pairs, t_cfg=None):
        return make_step(cfg, tx, tc.gamma, as_dtype(tc.dtype), pairs, penalize=self.penalize, remat=tc.remat)


class PostShare(Recipe):
    name = "postshare"
    penalize = True

    def describe(self, tc) -> dict:
        return {**super().describe(tc), "loss": "next-token cross-entropy + gamma * pairwise L2 penalty; "
                                                "the pairs are tied at the end"}


class DirectPost(Recipe):
    name = "direct+post"
    ties_first = True

    def describe(self, tc) -> dict:
        return {**super().describe(tc), "trains": "the shared bank rows (and corrections) and every other "
                                                  "floating leaf", "loss": "next-token cross-entropy"}


def _compressed_or_norm(params):
    """Mask: the trainable fields of compressed leaves, and norms; dense weights frozen."""
    def mark(path, x):
        if is_compressed(x):
            return jax.tree_util.tree_map(lambda f: not f, x.frozen())
        return any("norm" in str(getattr(k, "name", k)) for k in path)

    return jax.tree_util.tree_map_with_path(mark, params, is_leaf=is_compressed)


def _adapters_only(params):
    """Mask: the LoRA adapters' A and B; everything else frozen."""
    def none_train(x):
        return jax.tree_util.tree_map(lambda _: False, x)

    def mark(x):
        if is_lora(x):
            return dataclasses.replace(x.frozen(), base=none_train(x.frozen().base), a=True, b=True)
        return none_train(x.frozen()) if is_compressed(x) else False

    return jax.tree_util.tree_map(mark, params, is_leaf=is_compressed)


class Heal(Recipe):
    """Distillation from the dense teacher (issue: healing). The teacher is the model the student
    was compressed from; its tokenizer must be the student's."""
    name = "heal"
    teacher = True

    def describe(self, tc) -> dict:
        trains = {"all": "every floating leaf no kind freezes (bank rows, bases and coefficients, scales, "
                         "corrections, norms, embeddings)",
                  "compressed": "only the compressed leaves' trainable fields and the norms",
                  "lora": f"only rank-{tc.lora_rank} LoRA adapters on every linear weight"}[tc.trains]
        loss = f"(1 - {tc.kd_alpha}) * tau^2 * KL(teacher || student) at tau {tc.kd_temperature}"
        if tc.kd_alpha:
            loss += f" + {tc.kd_alpha} * CE"
        if tc.kd_beta and tc.kd_layers:
            loss += f" + {tc.kd_beta} * hidden-state MSE on layers {tc.kd_layers}"
        return {"recipe": self.name, "trains": trains, "loss": loss,
                "frozen": "bank indices, codes, zero points" + ("; every base weight" if tc.trains == "lora" else "")
                + ("; dense (uncompressed) weights and embeddings" if tc.trains == "compressed" else "")}

    def start(self, tc, params, cfg):
        if tc.trains == "lora" and not lora_paths(params):
            return attach(params, cfg, tc.lora_rank, alpha=tc.lora_alpha, seed=tc.seed)
        return params

    def mask(self, tc, params):
        if tc.trains == "compressed":
            return _compressed_or_norm(params)
        if tc.trains == "lora":
            return _adapters_only(params)
        return trainable_mask(params)

    def step(self, tc, cfg, tx, pairs, t_cfg=None):
        spec = kd_spec(tc)
        dtype, t_dtype = as_dtype(tc.dtype), as_dtype(tc.teacher_dtype or tc.dtype)

        def micro(p, toks, teacher):
            return kd_terms(p, cfg, teacher, t_cfg, toks, spec, dtype, t_dtype, tc.remat)

        return make_train_step(tx, micro)


def kd_spec(tc) -> KDLoss:
    layers = tuple(int(x) for x in tc.kd_layers.split(",") if x.strip()) if tc.kd_layers else ()
    return KDLoss(tc.kd_temperature, tc.kd_alpha, tc.kd_beta, layers, tc.kd_chunk)


RECIPES = {r.name: r for r in (Recipe(), PostShare(), DirectPost(), Heal())}


def recipe_for(tc) -> Recipe:
    """The recipe of a run's mode (inheritune's stages are plain runs)."""
    return RECIPES["plain" if tc.mode == "inheritune" else tc.mode]


def describe(tc) -> dict:
    return recipe_for(tc).describe(tc)


def trainable_count(mask, params) -> int:
    """Parameters a mask lets train (floating leaves only)."""
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda m, x: x.size if (m and jnp.issubdtype(x.dtype, jnp.floating)) else 0, mask, params))
    return int(sum(leaves))
