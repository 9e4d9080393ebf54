"""The tensors of Hugging Face's `GPT2LMHeadModel` as
`paxtrain.recipes.transformer_lm.TransformerLM`'s parameters (built with `tie_embeddings`).

GPT-2's `Conv1D` weights are [in, out], as paxtrain's `Linear`: no transpose. Its attention's
`c_attn` holds the query, key and value projections side by side on its last axis, each a third.
The head is the token embedding (no `lm_head` tensor is read).

    >>> GPT2.spec("blocks.layers.0.attention.value_proj.bias", (32,))
    HfTensor(name='transformer.h.0.attn.c_attn.bias', transposed=False, part=2, parts=3)
"""

from __future__ import annotations

from paxtrain.hf.tensors import HfTensor, NameMap

_LAYER = "transformer.h.{layer}."


def _attention_part(param: str, part: int) -> HfTensor:
    return HfTensor(f"{_LAYER}attn.c_attn.{param}", part=part, parts=3)


GPT2 = NameMap(
    model={
        "token_embed.weight": HfTensor("transformer.wte.weight"),
        "position_embed.weight": HfTensor("transformer.wpe.weight"),
        "final_norm.scale": HfTensor("transformer.ln_f.weight"),
        "final_norm.offset": HfTensor("transformer.ln_f.bias"),
    },
    layer={
        "attention_norm.scale": HfTensor(f"{_LAYER}ln_1.weight"),
        "attention_norm.offset": HfTensor(f"{_LAYER}ln_1.bias"),
        **{
            f"attention.{proj}_proj.{param}": _attention_part(param, part)
            for part, proj in enumerate(("query", "key", "value"))
            for param in ("weight", "bias")
        },
        "attention.output_proj.weight": HfTensor(f"{_LAYER}attn.c_proj.weight"),
        "attention.output_proj.bias": HfTensor(f"{_LAYER}attn.c_proj.bias"),
        "mlp_norm.scale": HfTensor(f"{_LAYER}ln_2.weight"),
        "mlp_norm.offset": HfTensor(f"{_LAYER}ln_2.bias"),
        "mlp.layers.0.weight": HfTensor(f"{_LAYER}mlp.c_fc.weight"),
        "mlp.layers.0.bias": HfTensor(f"{_LAYER}mlp.c_fc.bias"),
        "mlp.layers.2.weight": HfTensor(f"{_LAYER}mlp.c_proj.weight"),
        "mlp.layers.2.bias": HfTensor(f"{_LAYER}mlp.c_proj.bias"),
    },
    # The causal masks old files saved as buffers; the tied head some files repeat.
    ignored=(r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias", r"lm_head\.weight"),
    optional_prefix="transformer.",
)
