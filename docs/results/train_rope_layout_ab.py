"""The +all row with RoPE applied after the heads move in front ([B, H, T, Dh], as before: the backward's
rotate_half then comes out in that layout and a second kernel copies it back to the products' layout)
against the code as it is (RoPE on [B, T, H, Dh], then the move). argv: variant (before|after) preset
out.json"""

import sys

from plus_all_row import run

from muomni.models import layers

variant, preset, out = sys.argv[1:4]
if variant == "before":

    def _attend(self, x, cos, sin, mask, input_pos, norm):  # noqa: ANN001, ANN202
        """The training path of Attention._attend as it was (no fused decode kernel here)."""
        b, t, _ = x.shape
        if norm is not None:
            x = norm(x)
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        rows = slice(0, t) if input_pos is None else input_pos
        cos, sin = cos[rows], sin[rows]
        q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
        assert input_pos is None  # training and validation only
        return self._attention(q, k, v, mask, input_pos)

    layers.Attention._attend = _attend
run(variant, out, preset)
