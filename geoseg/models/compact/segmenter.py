"""The compact model behind the `Segmenter` contract that the pipeline calls."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from geoseg.errors import InputError, ModelLoadError
from geoseg.models.base import ModelInfo, Prediction
from geoseg.models.change import APPEARED, DIRECTIONS, directed_change_types, per_query
from geoseg.models.compact.config import CompactConfig
from geoseg.models.compact.model import WEIGHTS_NAME, CompactModel
from geoseg.models.compact.text import TextEncoder, TextFeatures, shared_text_encoder
from geoseg.models.concepts import Inventory, QueryKnowledge, judge, sentence_embeddings
from geoseg.provenance import sha256_file
from geoseg.queries import change_direction

log = logging.getLogger("geoseg")
CPU_DECODE_CHUNK = 4  # (tile, query) pairs per decoder call on a CPU
# compact-change reads the direction from the query's words; a query that names none is asked once
# per direction with these words before it. Chosen by measurement (docs/concepts.md, "Change
# semantics"): on 30 rendered pairs with new and demolished buildings, "removed buildings" found the
# demolished ones at IoU 0.90, the same query with the dates swapped at 0.41-0.42.
DIRECTION_WORDS = {"appeared": "new", "disappeared": "removed"}

LICENSE = (
    "Apache-2.0 (weights: trained by geoseg on real imagery of mixed terms and synthetic scenes, see "
    "docs/models/compact.md; encoder initialised from ImageNet EfficientNet-Lite0, Apache-2.0; text encoder "
    "all-MiniLM-L6-v2, Apache-2.0)"
)


class CompactSegmenter:
    """probabilities = sigmoid(mask logits) * sigmoid(existence logit), per image and query.

    The existence factor is what keeps target-free tiles empty: a tile whose pooled features do
    not match the query gets a small existence probability and every pixel of it is scaled down.
    """

    def __init__(self, model: CompactModel, text: TextEncoder, info: ModelInfo, device: torch.device) -> None:
        # channels-last weights: the layout in which the encoder's depthwise convolutions ran
        # fastest on a 2-core CPU (outputs equal to 2e-7; docs/models/compact.md, "Speed")
        # torch's stub of Module.to lacks memory_format, which it accepts
        self.model = model.to(device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        self.model.fold_batch_norms()
        self.text = text
        self.info = info
        self.device = device

    def predict(self, images: torch.Tensor, queries: Sequence[str]) -> Prediction:
        return self._predict(images, queries, None)

    @torch.inference_mode()
    def _predict(self, images: torch.Tensor, queries: Sequence[str], before: torch.Tensor | None) -> Prediction:
        """B x Q x H x W probabilities of one date, or of the queried change with `before`."""
        self._check(images, queries, before)
        images = images.to(self.device, torch.float32)
        if before is not None:
            before = before.to(self.device, torch.float32)
        text = self.text.encode(list(queries)).to(self.device)
        scales = self.model.config.inference_scales
        probabilities = cast(torch.Tensor, sum(self._read(images, before, text, scale) for scale in scales)) / len(scales)
        return Prediction(probabilities=probabilities.float())

    def _read(self, images: torch.Tensor, before: torch.Tensor | None, text: TextFeatures, scale: float) -> torch.Tensor:
        """B x Q x H x W probabilities from the tiles resampled by `scale`, resampled back."""
        size = images.shape[-2:]
        if scale != 1.0:
            images = resampled(images, scale)
            before = resampled(before, scale) if before is not None else None
        feats = self.model.encode_images(images, before)
        b, q = images.shape[0], text.tokens.shape[0]
        image_index = torch.arange(b, device=self.device).repeat_interleave(q)
        text_index = torch.arange(q, device=self.device).repeat(b)
        # On a CPU, decoding a few (tile, query) pairs per call keeps the decoder's activations in
        # cache: 8 queries cost 3.2x one query instead of 4.4x (benchmarks/bench_multiquery.py).
        chunk = CPU_DECODE_CHUNK if self.device.type == "cpu" else b * q
        parts = []
        for start in range(0, b * q, chunk):
            pairs = slice(start, start + chunk)
            out = self.model.decode(feats, text.index(text_index[pairs]), image_index[pairs])
            parts.append(torch.sigmoid(out.mask_logits) * torch.sigmoid(out.exist_logits)[:, None, None])
        probabilities = torch.cat(parts).view(b, q, *images.shape[-2:])
        if scale != 1.0:
            probabilities = F.interpolate(probabilities, size=size, mode="bilinear", align_corners=False)
        return probabilities

    def encode_queries(self, queries: Sequence[str]) -> None:
        self.text.encode(list(queries))

    def _check(self, images: torch.Tensor, queries: Sequence[str], before: torch.Tensor | None) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"{self.info.name}: expected images B x 3 x H x W, got {tuple(images.shape)}")
        if images.shape[-1] % 32 or images.shape[-2] % 32:
            raise InputError(f"{self.info.name}: tile size {tuple(images.shape[-2:])} must be a multiple of 32")
        if not queries or any(not q.strip() for q in queries):
            raise InputError(f"{self.info.name}: every query must be a non-empty string")
        if self.model.config.change and before is None:
            raise InputError(f"{self.info.name} is a change model: give both dates (geoseg change BEFORE AFTER)")
        if before is not None and not self.model.config.change:
            raise InputError(f"{self.info.name} reads one date; it is asked about pairs through geoseg.models.change")
        if before is not None and before.shape != images.shape:
            raise InputError(f"{self.info.name}: before {tuple(before.shape)} and after {tuple(images.shape)} differ in shape")


def directed_wording(query: str, direction: str) -> str:
    """How compact-change is asked for one direction of `query`'s change: as it is when its words
    name that direction, else with the direction's word before it ("buildings" -> "removed buildings")."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    said = change_direction(query)
    if said == direction:
        return query
    if said != "both":
        raise InputError(f"the query {query!r} names the other direction; it cannot be asked for {direction}")
    return f"{DIRECTION_WORDS[direction]} {query}"


class AsksDirections(CompactSegmenter):
    """ChangeAware for compact-change: each (query, direction) asked with the direction's wording
    (directed_wording), all of a batch's wordings in one call, so each pair of tiles is encoded once."""

    def predict_change(self, after: torch.Tensor, before: torch.Tensor, queries: Sequence[str], *,
                       direction: str | Sequence[str] = APPEARED) -> Prediction:
        asked = [directed_wording(q, d) for q, d in zip(queries, per_query(direction, queries), strict=True)]
        unique = list(dict.fromkeys(asked))
        p = self._predict(after, unique, before).probabilities
        return Prediction(p[:, [unique.index(a) for a in asked]])

    def change_types(self, query: str) -> tuple[str, ...]:
        return directed_change_types(query)

    def encode_queries(self, queries: Sequence[str]) -> None:
        super().encode_queries([*queries, *(directed_wording(q, d) for q in queries for d in DIRECTIONS
                                            if change_direction(q) in (d, "both"))])


class InventoriedSegmenter(CompactSegmenter):
    """A compact segmenter whose config.json declares its inventory (KnowsConcepts): each query's
    sentence embedding (the mean-pooled MiniLM token the model itself reads, L2-normalised) is
    compared with every trained wording's. The wordings' embeddings ship beside the weights
    (INVENTORY_VECTORS_NAME, written at export); without that file they are computed once per
    model, in the pipeline's query thread when it encodes the queries ahead (`encode_queries`)."""

    def __init__(self, model: CompactModel, text: TextEncoder, info: ModelInfo, device: torch.device,
                 inventory: Inventory, wording_vectors: torch.Tensor | None = None) -> None:
        super().__init__(model, text, info, device)
        self.inventory = inventory
        self._wording_vectors = wording_vectors
        self._vectors_lock = threading.Lock()

    def encode_queries(self, queries: Sequence[str]) -> None:
        super().encode_queries(queries)
        self._inventory_vectors()

    def check_queries(self, queries: Sequence[str]) -> list[QueryKnowledge]:
        vectors = sentence_embeddings(self.text.encode(list(queries)).tokens[:, 0].cpu())
        return judge(queries, vectors, self.inventory, self._inventory_vectors(),
                     model=f"{self.info.name} {self.info.version}")

    def _inventory_vectors(self) -> torch.Tensor:
        with self._vectors_lock:
            if self._wording_vectors is None:
                wordings = [w for w, _ in self.inventory.wordings()]
                self._wording_vectors = sentence_embeddings(self.text.encode(wordings).tokens[:, 0].cpu())
            return self._wording_vectors


# The trained wordings' sentence embeddings, beside the weights: a cold run would otherwise encode
# every wording (217 in 0.8.0) one string at a time before its first tile.
INVENTORY_VECTORS_NAME = "inventory_vectors.safetensors"


def _wordings_key(inventory: Inventory, text_encoder: str) -> str:
    """What the stored vectors were computed from: the wordings, in order, and the text encoder."""
    wordings = "\n".join(w for w, _ in inventory.wordings())
    return hashlib.sha256(f"{text_encoder}\n{wordings}".encode()).hexdigest()


def write_inventory_vectors(directory: str | Path) -> Path:
    """Compute the trained wordings' embeddings of the checkpoint in `directory` (config.json with
    an inventory) and store them beside its weights (replacing a file an earlier export left)."""
    path = Path(directory) / INVENTORY_VECTORS_NAME
    path.unlink(missing_ok=True)  # a new export's file is stale by design: no warning when loading below
    segmenter = load_compact_segmenter(directory)
    if not isinstance(segmenter, InventoriedSegmenter):
        raise ModelLoadError(f"{directory}: config.json declares no inventory; nothing to store")
    key = _wordings_key(segmenter.inventory, segmenter.model.config.text_encoder)
    save_file({"vectors": segmenter._inventory_vectors().contiguous()}, str(path), metadata={"wordings": key})
    return path


def _stored_inventory_vectors(directory: Path, config: CompactConfig) -> torch.Tensor | None:
    """The stored embeddings when they were computed from this inventory and text encoder."""
    path = directory / INVENTORY_VECTORS_NAME
    if config.inventory is None or not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("wordings") != _wordings_key(config.inventory, config.text_encoder):
            log.warning("%s: computed for other wordings or another text encoder; ignored", path)
            return None
        return f.get_tensor("vectors")


class CompactChangeSegmenter(AsksDirections, CompactSegmenter):
    """compact-change: a change-native compact model that is asked one direction at a time."""


class InventoriedChangeSegmenter(AsksDirections, InventoriedSegmenter):
    """compact-change with a declared inventory (the shipped one)."""


def resampled(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Tiles B x C x H x W resampled by about `scale`: each side to the nearest multiple of 32
    pixels (the encoder's stride), antialiased when shrinking, as GDAL's averaging overviews are."""
    size = [max(32, round(n * scale / 32) * 32) for n in images.shape[-2:]]
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", antialias=shrink, align_corners=False)


def model_info(config: CompactConfig, name: str, sha256: str | None) -> ModelInfo:
    return ModelInfo(
        name=name,
        version=config.version,
        tile_size=config.tile_size,
        overlap=config.overlap,
        bands=3,
        weights_sha256=sha256,
        license=LICENSE,
        gsd_range=config.gsd_range,
        extra={
            "family": "compact",
            "encoder": config.encoder,
            "text_encoder": config.text_encoder,
            "model_type": config.model_type,
            "inference_scales": list(config.inference_scales),  # the weights alone do not say how they were read
            **({"concepts": {c.name: c.origin for c in config.inventory.concepts},
                "known_rule": config.inventory.effective_rule.to_dict()} if config.inventory else {}),
        },
    )


def load_compact_segmenter(
    path: str | Path, *, device: torch.device | str = "cpu", allow_pickle: bool = False
) -> CompactSegmenter:
    """Load a compact checkpoint directory (config.json + model.safetensors) as a Segmenter.

    `allow_pickle` is accepted for the registry's uniform call; compact checkpoints are
    safetensors only, so it changes nothing.
    """
    del allow_pickle
    path = Path(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f"{weights} is missing; a compact checkpoint needs config.json + {WEIGHTS_NAME}")
    device = torch.device(device)
    try:
        model = CompactModel.from_pretrained(path, map_location=device)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{path}: weights do not fit config.json ({type(e).__name__}: {str(e)[:200]})") from None
    config = model.config
    text = shared_text_encoder(config.text_encoder, config.max_text_tokens, device)
    name = "compact-change" if config.change else "compact"
    info = model_info(config, name, sha256_file(weights))
    if config.inventory is not None:
        cls = InventoriedChangeSegmenter if config.change else InventoriedSegmenter
        return cls(model, text, info, device, config.inventory, _stored_inventory_vectors(path, config))
    return (CompactChangeSegmenter if config.change else CompactSegmenter)(model, text, info, device)
