"""The paper's best generator per dataset (Table 3), at 64x64 with T = 64.

``TABLE3_PARAMS_M`` is Table 3's "Gen. Param. Count (M)" row, as printed. Every row but
afhq-wild matches its stated hyper-parameters; see docs/configs.md ("Presets and Table 3").
"""

from __future__ import annotations

from typing import Any

_V2 = dict(input_generator="v2")

PRESETS: dict[str, dict[str, Any]] = {
    "celeba": dict(_V2, input_tanh=False, latent_to_init=False, d_latent=128, d_in=8, d_in_proj=128,
                   d_hidden=1024, num_layers=2),
    "metfaces": dict(input_generator="v1", latent_to_init=True, d_latent=512, d_hidden=4096, num_layers=2),
    "afhq-cat": dict(_V2, input_tanh=False, latent_to_init=True, d_latent=256, d_in=8, d_in_proj=128,
                     d_hidden=1024, num_layers=1),
    "afhq-dog": dict(_V2, input_tanh=False, latent_to_init=False, d_latent=256, d_in=8, d_in_proj=128,
                     d_hidden=1024, num_layers=2),
    "afhq-wild": dict(_V2, input_tanh=False, latent_to_init=False, d_latent=512, d_in=8, d_in_proj=128,
                      d_hidden=1024, num_layers=1),
    "lsun-church": dict(_V2, input_tanh=True, latent_to_init=True, d_latent=512, d_in=16, d_in_proj=256,
                        d_hidden=1024, num_layers=2),
}

TABLE3_PARAMS_M: dict[str, int] = {
    "celeba": 14, "metfaces": 220, "afhq-cat": 6, "afhq-dog": 14, "afhq-wild": 6, "lsun-church": 17,
}
TABLE3_TOTAL_M: dict[str, int] = {  # "Total Param Count (M)": the generator and the discriminator
    "celeba": 26, "metfaces": 232, "afhq-cat": 18, "afhq-dog": 26, "afhq-wild": 19, "lsun-church": 29,
}
