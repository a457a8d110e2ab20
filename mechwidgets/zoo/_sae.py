"""A small sparse autoencoder that reads and writes sae-lens 6.x's on-disk format.

sae-lens stores an SAE as a folder with ``cfg.json`` (``SAEConfig.to_dict()``, with
``architecture`` and ``metadata.hook_name``) and ``sae_weights.safetensors`` (``W_enc``
``[d_in, d_sae]``, ``b_enc`` ``[d_sae]``, ``W_dec`` ``[d_sae, d_in]``, ``b_dec`` ``[d_in]``; and
``threshold`` ``[d_sae]`` for JumpReLU). :class:`SimpleSAE` loads those folders without sae-lens
and encodes and decodes exactly as sae-lens's ``StandardSAE`` (ReLU), ``TopKSAE`` and
``JumpReLUSAE`` (Gemma Scope's) do, so code written against either works with both. :func:`save_sae` writes the same files sae-lens's ``SAE.save_model`` writes.

Sparse autoencoders for dictionary learning: Bricken et al. 2023, "Towards Monosemanticity";
TopK SAEs: Gao et al. 2024, "Scaling and evaluating sparse autoencoders"; JumpReLU SAEs: Rajamanoharan
et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse Autoencoders".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..errors import SAEError, ZooError

SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
#: The sae-lens version whose format :func:`save_sae` writes (6.x; loads with 6.0 and later).
SAE_LENS_FORMAT_VERSION = "6.54.12"
SUPPORTED_ARCHITECTURES = ("standard", "topk", "jumprelu")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


@dataclass
class SimpleSAEConfig:
    """The fields of sae-lens's ``SAEConfig`` that :class:`SimpleSAE` uses."""

    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int | None = None
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    rescale_acts_by_decoder_norm: bool = False
    metadata: SimpleNamespace = field(default_factory=SimpleNamespace)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimpleSAEConfig:
        meta = dict(d.get("metadata") or {})
        return cls(
            d_in=int(d["d_in"]),
            d_sae=int(d["d_sae"]),
            architecture=d.get("architecture", "standard"),
            k=d.get("k"),
            dtype=d.get("dtype", "float32"),
            device=d.get("device", "cpu"),
            apply_b_dec_to_input=bool(d.get("apply_b_dec_to_input", True)),
            normalize_activations=d.get("normalize_activations", "none"),
            reshape_activations=d.get("reshape_activations", "none"),
            rescale_acts_by_decoder_norm=bool(d.get("rescale_acts_by_decoder_norm", False)),
            metadata=SimpleNamespace(**meta),
        )

    def to_dict(self) -> dict[str, Any]:
        """The dict sae-lens 6.x writes as ``cfg.json`` for this architecture."""
        out: dict[str, Any] = {
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": self.dtype,
            "device": self.device,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": self.reshape_activations,
            "metadata": {
                "sae_lens_version": SAE_LENS_FORMAT_VERSION,
                "sae_lens_training_version": SAE_LENS_FORMAT_VERSION,
                **{k: v for k, v in vars(self.metadata).items()
                   if k not in ("sae_lens_version", "sae_lens_training_version")},
            },
        }
        if self.architecture == "topk":
            out["k"] = self.k
            out["rescale_acts_by_decoder_norm"] = self.rescale_acts_by_decoder_norm
        out["architecture"] = self.architecture
        return out


class SimpleSAE(nn.Module):
    """A ReLU ("standard"), TopK or JumpReLU sparse autoencoder with sae-lens's parameter names.

    Attributes:
        W_enc: ``[d_in, d_sae]``; b_enc: ``[d_sae]``; W_dec: ``[d_sae, d_in]``; b_dec: ``[d_in]``;
            threshold: ``[d_sae]`` (JumpReLU only: a feature fires where its pre-activation
            exceeds it).
        hook_name: the TransformerLens hook whose activations it reads (``cfg.metadata.hook_name``).
        d_in, d_sae: input width and number of features.
        cfg: a :class:`SimpleSAEConfig` (``cfg.metadata.hook_name`` as in sae-lens).
    """

    def __init__(self, cfg: SimpleSAEConfig):
        super().__init__()
        if cfg.architecture not in SUPPORTED_ARCHITECTURES:
            raise SAEError(
                f"SimpleSAE supports the architectures {SUPPORTED_ARCHITECTURES}, not "
                f"{cfg.architecture!r}; install sae-lens (`pip install sae-lens`) to load it."
            )
        if cfg.normalize_activations != "none" or cfg.reshape_activations != "none":
            raise SAEError(
                "SimpleSAE only supports normalize_activations='none' and "
                "reshape_activations='none'; install sae-lens to load this SAE."
            )
        if cfg.architecture == "topk" and not cfg.k:
            raise SAEError("A topk SAE config needs a positive `k`.")
        self.cfg = cfg
        dtype = _DTYPES.get(cfg.dtype, torch.float32)
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))

    def _weight_shapes(self) -> dict[str, tuple[int, ...]]:
        cfg = self.cfg
        shapes: dict[str, tuple[int, ...]] = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,),
                                              "W_dec": (cfg.d_sae, cfg.d_in), "b_dec": (cfg.d_in,)}
        if cfg.architecture == "jumprelu":
            shapes["threshold"] = (cfg.d_sae,)
        return shapes

    @property
    def hook_name(self) -> str:
        return getattr(self.cfg.metadata, "hook_name", None)  # type: ignore[return-value]

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``[..., d_sae]`` (before ReLU / TopK)."""
        x = x.to(self.W_enc.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        hidden_pre = x @ self.W_enc + self.b_enc
        if self.cfg.rescale_acts_by_decoder_norm:
            hidden_pre = hidden_pre * self.W_dec.norm(dim=-1)
        return hidden_pre

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` for activations ``x`` ``[..., d_in]``."""
        hidden_pre = self.encode_pre(x)
        if self.cfg.architecture == "topk":
            k = min(int(self.cfg.k), hidden_pre.shape[-1])  # type: ignore[arg-type]
            values, indices = torch.topk(hidden_pre, k=k, dim=-1, sorted=False)
            out = torch.zeros_like(hidden_pre)
            out.scatter_(-1, indices, values.relu())
            return out
        if self.cfg.architecture == "jumprelu":  # as sae-lens: relu(pre) where pre > threshold
            return hidden_pre.relu() * (hidden_pre > self.threshold).to(hidden_pre.dtype)
        return hidden_pre.relu()

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` from feature activations ``[..., d_sae]``."""
        if self.cfg.rescale_acts_by_decoder_norm:
            feature_acts = feature_acts / self.W_dec.norm(dim=-1)
        return feature_acts @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``cfg.json`` and ``sae_weights.safetensors`` as sae-lens's ``save_model`` does."""
        return save_sae(path, self.cfg.to_dict(),
                        {k: v.detach() for k, v in self.state_dict().items()})

    @classmethod
    def load_from_disk(cls, path: str | Path, device: str = "cpu",
                       expected_sha256: dict[str, str] | None = None) -> SimpleSAE:
        """Load an SAE folder written by sae-lens's ``save_model`` (or :func:`save_sae`)."""
        from ._loading import load_safetensors, read_json

        path = Path(path)
        hashes = expected_sha256 or {}
        cfg_path = path / SAE_CFG_FILENAME
        if hashes.get(SAE_CFG_FILENAME):
            from ._loading import check_file

            check_file(cfg_path, hashes[SAE_CFG_FILENAME])
        cfg = SimpleSAEConfig.from_dict(read_json(cfg_path))
        state = load_safetensors(path / SAE_WEIGHTS_FILENAME, hashes.get(SAE_WEIGHTS_FILENAME))
        sae = cls(cfg)
        expected = sae._weight_shapes()
        for key, shape in expected.items():
            if key not in state or tuple(state[key].shape) != shape:
                raise ZooError(
                    f"SAE file {path / SAE_WEIGHTS_FILENAME} does not match {cfg_path}: "
                    f"{key} should have shape {shape}."
                )
        sae.load_state_dict({k: state[k] for k in expected}, strict=True)
        sae.cfg.device = str(device)
        return sae.to(device).eval()


def save_sae(path: str | Path, cfg_dict: dict[str, Any],
             state_dict: dict[str, torch.Tensor]) -> tuple[Path, Path]:
    """Write an SAE folder in sae-lens 6.x's format: ``cfg.json`` and ``sae_weights.safetensors``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights_path = path / SAE_WEIGHTS_FILENAME
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(weights_path))
    cfg_path = path / SAE_CFG_FILENAME
    with open(cfg_path, "w") as f:
        json.dump(cfg_dict, f)
    return weights_path, cfg_path


def sae_lens_available() -> bool:
    try:
        import sae_lens  # noqa: F401
    except Exception:
        return False
    return True


def load_sae_folder(path: Path, *, device: str = "cpu", use_sae_lens: bool | None = None,
                    expected_sha256: dict[str, str] | None = None) -> Any:
    """Load one SAE folder with sae-lens's ``SAE.load_from_disk`` if available, else SimpleSAE."""
    from ._loading import check_file

    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
        check_file(path / name, (expected_sha256 or {}).get(name))
    if use_sae_lens is None:
        use_sae_lens = sae_lens_available()
    if not use_sae_lens:
        return SimpleSAE.load_from_disk(path, device=device, expected_sha256=expected_sha256)
    if not sae_lens_available():
        raise SAEError("use_sae_lens=True but sae-lens is not installed: `pip install sae-lens`.")
    from sae_lens import SAE

    try:
        sae = SAE.load_from_disk(str(path), device=device)
    except Exception as e:
        raise ZooError(f"SAE in {path} could not be loaded by sae-lens ({type(e).__name__}: "
                       f"{e}).") from e
    return sae.eval()
