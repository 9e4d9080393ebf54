"""The tensors of Hugging Face's `LlamaForCausalLM` as `paxtrain.recipes.llama_lm.LlamaLM`'s
parameters.

The projections are PyTorch `nn.Linear`s, [out, in]: transposed into paxtrain's [in, out]. The
query and key weights need no permutation: `paxtrain.nn.apply_rope` rotates the two halves of
each head (`rotate_half`), the layout Hugging Face's files hold (Meta's original files, which
interleave the pairs, are converted to it by `transformers`' conversion script).

    >>> LLAMA.spec("blocks.layers.1.attention.key_proj.weight", (32, 16))
    HfTensor(name='model.layers.1.self_attn.k_proj.weight', transposed=True, part=0, parts=1)
"""

from __future__ import annotations

from paxtrain.hf.tensors import HfTensor, NameMap


def _linear(name: str) -> HfTensor:
    return HfTensor(name, transposed=True)


LLAMA = NameMap(
    model={
        "token_embed.weight": HfTensor("model.embed_tokens.weight"),
        "final_norm.scale": HfTensor("model.norm.weight"),
        "head.weight": _linear("lm_head.weight"),
    },
    layer={
        "attention_norm.scale": HfTensor("model.layers.{layer}.input_layernorm.weight"),
        "attention.query_proj.weight": _linear("model.layers.{layer}.self_attn.q_proj.weight"),
        "attention.key_proj.weight": _linear("model.layers.{layer}.self_attn.k_proj.weight"),
        "attention.value_proj.weight": _linear("model.layers.{layer}.self_attn.v_proj.weight"),
        "attention.output_proj.weight": _linear("model.layers.{layer}.self_attn.o_proj.weight"),
        "mlp_norm.scale": HfTensor("model.layers.{layer}.post_attention_layernorm.weight"),
        "mlp.gate_proj.weight": _linear("model.layers.{layer}.mlp.gate_proj.weight"),
        "mlp.up_proj.weight": _linear("model.layers.{layer}.mlp.up_proj.weight"),
        "mlp.down_proj.weight": _linear("model.layers.{layer}.mlp.down_proj.weight"),
    },
    # Older files saved the rotary frequencies as a buffer; tied ones may repeat the embedding.
    ignored=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"lm_head\.weight"),
)
