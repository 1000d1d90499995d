"""ME-GraphAU (Luo et al., IJCAI 2022) and EmotiRAM-FAU-ME-Graph (Masur 2022).

**megraph-au** -- "Learning Multi-dimensional Edge Feature-based AU Relation Graph for Facial Action
Unit Recognition", ResNet-50 version:

- the trunk's 7x7 feature map (224 input) is a set of 49 tokens; a linear block (FC, BN, ReLU)
  maps each from 2048 to 512 values;
- **ANFL / AFG**: one linear block per AU maps the tokens to AU-specific features U_i; their global
  average over the tokens is the AU's node feature v_i;
- **ANFL / FGG** (training stage 1): a facial graph linking each node to its k most similar nodes
  (dot product, k = 3 for DISFA) and one GCN layer, v <- ReLU(v + BN(A V(v) + U(v))), with A the
  symmetrically normalised kNN adjacency;
- **MEFL** (stage 2, the model that is evaluated): FAM, a cross-attention from each U_i to the
  full-face tokens; ARM, a cross-attention between the FAM outputs of every ordered AU pair; a
  projection and batch norm give, after averaging over tokens, one multi-dimensional edge feature
  per ordered pair; two gated-GCN layers update nodes and edges together;
- the classifier scores AU i as the cosine similarity between its node feature and a learned
  non-negative vector s_i: a probability in [0, 1] (no sigmoid).

The reference trains in two stages (stage 1: AFG + FGG; stage 2: AFG + MEFL, initialised from
stage 1). ``stage=2`` (default) builds the evaluated model; ``stage=1`` the first-stage (ANFL)
model. ``create_encoder("megraph-au", stage1_checkpoint=PATH)`` starts a stage-2 model from a
stage-1 checkpoint as the reference's ``train_stage2.py --resume`` does: AFG, the trunk and the
classifier vectors are loaded, MEFL (49 tensors) starts fresh by request and is listed in
``spec.fresh``. The stage-2 auxiliary classifier of edge co-occurrence (4 classes per ordered AU
pair, label 2*y_i + y_j) is built with ``edge_head=True``; it then adds an ``au_edges`` output
(B, n_aus**2, 4) and :func:`edge_targets` gives its labels.

Module names follow the reference, so its public ResNet-50 checkpoints (``MEFARG_resnet50_*.pth``
and the stage-1 files, a dict with ``state_dict``, keys prefixed ``module.``) load key for key. With
``pretrained=PATH`` the structure follows the checkpoint where the option is left out: the AU count
(``head.sc``), the stage (FGG or MEFL tensors) and, through the AU count, the neighbour count k of
the facial graph (3 for 8 AUs, 4 otherwise, as the reference's DISFA and BP4D configs). An option
that contradicts the checkpoint is refused. ``head.edge_fc.*`` is not used when the model is built
without the edge head (it feeds only ``au_edges``).

**emotiram-fau-megraph** -- megraph-au's AU probabilities, then one FC layer to 7 emotions; outputs
both ``au`` (kept for the thesis's AU-retention tables) and ``expression``. ``au_checkpoint`` loads a
megraph-au checkpoint (affbench's or the public one) into the AU part.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from affbench.encoders.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    EncoderSpec,
    check_choice,
    check_positive,
    register_encoder,
)
from affbench.encoders.trunks import ResNet50Trunk
from affbench.encoders.weights import apply_pretrained, is_checkpoint_path, load_au_checkpoint, read_state_dict
from affbench.errors import AffbenchError

#: DISFA's detection protocol AUs, the default head of megraph-au.
DISFA_DETECTION_AUS = (1, 2, 4, 6, 9, 12, 25, 26)
#: Node feature size: the trunk's 2048 channels divided by 4, as in the reference.
NODE_DIM = 512
#: Classes of the edge co-occurrence head: 2 * y_i + y_j for binary AU labels.
EDGE_CLASSES = 4
#: MEFL's tensor prefixes: what a stage-2 model started from a stage-1 checkpoint learns from scratch.
MEFL_PREFIXES = ("head.edge_extractor.", "head.gnn.", "head.edge_fc.")
#: FGG's tensor prefixes: the stage-1 graph that stage 2 leaves behind.
FGG_PREFIXES = ("head.gnn.U.", "head.gnn.V.", "head.gnn.bnv.")


def reference_neighbours(n_aus: int) -> int:
    """The facial graph's k in the reference configs: 3 for DISFA's 8 AUs, 4 for BP4D's 12 (and the code's default)."""
    return 3 if n_aus == 8 else 4


def checkpoint_structure(state: dict[str, torch.Tensor], prefix: str = "") -> dict:
    """The megraph-au options a state dict implies: ``n_aus`` and ``stage`` (empty if it is no ME-GraphAU)."""
    sc = state.get(prefix + "head.sc")
    if sc is None or sc.ndim != 2:
        return {}
    structure = {"n_aus": int(sc.shape[0])}
    if prefix + "head.gnn.U.weight" in state:
        structure["stage"] = 1
    elif any(key.startswith(prefix + "head.edge_extractor.") for key in state):
        structure["stage"] = 2
    return structure


def _state_of(options: dict, option: str) -> dict | None:
    path = options.get(option)
    return read_state_dict(path) if path is not None and is_checkpoint_path(path) else None


def _infer_megraph(options: dict) -> dict:
    if (state := _state_of(options, "pretrained")) is not None:
        return checkpoint_structure(state)
    if (state := _state_of(options, "stage1_checkpoint")) is not None:
        return {key: value for key, value in checkpoint_structure(state).items() if key == "n_aus"}
    return {}


def _infer_emotiram_megraph(options: dict) -> dict:
    if (state := _state_of(options, "pretrained")) is not None:
        implied = checkpoint_structure(state, prefix="au_model.")
        if (head := state.get("expression_head.weight")) is not None:
            implied["n_classes"] = int(head.shape[0])
        return implied
    if (state := _state_of(options, "au_checkpoint")) is not None:
        return checkpoint_structure(state)
    return {}


def edge_targets(au_labels: torch.Tensor) -> torch.Tensor:
    """Labels of the ``au_edges`` head: for ordered pair e = i * n + j, the class 2 * y_i + y_j.

    Parameters
    ----------
    au_labels : Tensor of shape (B, n_aus) with values 0 or 1

    Returns
    -------
    LongTensor of shape (B, n_aus ** 2)

    Examples
    --------
    >>> edge_targets(torch.tensor([[1, 0]])).tolist()
    [[3, 2, 1, 0]]
    """
    y = au_labels.long()
    return (2 * y.unsqueeze(2) + y.unsqueeze(1)).flatten(1)


class LinearBlock(nn.Module):
    """FC, then batch norm over the feature dimension and ReLU, applied to every token."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features)
        nn.init.normal_(self.fc.weight, std=math.sqrt(2.0 / out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, in) -> (B, L, out)
        return torch.relu(self.bn(self.fc(x).transpose(1, 2))).transpose(1, 2)


class CrossAttention(nn.Module):
    """Single-head attention from ``queries`` to ``context`` with keys of half the width."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear_q = nn.Linear(dim, dim // 2)
        self.linear_k = nn.Linear(dim, dim // 2)
        self.linear_v = nn.Linear(dim, dim)
        self.scale = (dim // 2) ** -0.5
        for layer, fan in ((self.linear_q, dim // 2), (self.linear_k, dim // 2), (self.linear_v, dim)):
            nn.init.normal_(layer.weight, std=math.sqrt(2.0 / fan))

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        attention = (self.linear_q(queries) @ self.linear_k(context).transpose(-2, -1)) * self.scale
        return attention.softmax(dim=-1) @ self.linear_v(context)


def _pair_indices(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """For ordered pair e = i * n + j: its end node i and start node j."""
    e = torch.arange(n * n, device=device)
    return e // n, e % n


class EdgeFeatures(nn.Module):
    """MEFL's graph edge modelling: FAM, ARM, projection -> one feature per ordered AU pair."""

    def __init__(self, dim: int, n_aus: int):
        super().__init__()
        self.FAM = CrossAttention(dim)
        self.ARM = CrossAttention(dim)
        self.edge_proj = nn.Linear(dim, dim)
        self.bn = nn.BatchNorm2d(n_aus * n_aus)
        nn.init.normal_(self.edge_proj.weight, std=math.sqrt(2.0 / dim))

    def forward(self, au_features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # au_features (B, N, L, C); tokens (B, L, C) -> edges (B, N*N, C)
        n = au_features.shape[1]
        located = self.FAM(au_features, tokens.unsqueeze(1))  # cues of each AU in the full face
        end, start = _pair_indices(n, au_features.device)
        related = self.ARM(located[:, start], located[:, end])
        return self.bn(self.edge_proj(related)).mean(dim=-2)


class GatedGraphLayers(nn.Module):
    """Two residual gated-GCN layers updating node and multi-dimensional edge features."""

    def __init__(self, dim: int, n_aus: int):
        super().__init__()
        self.n_aus = n_aus
        for layer in (1, 2):
            for name in "UVABE":
                linear = nn.Linear(dim, dim, bias=False)
                nn.init.normal_(linear.weight, std=math.sqrt(2.0 / dim))
                setattr(self, f"{name}{layer}", linear)
            setattr(self, f"bnv{layer}", nn.BatchNorm1d(n_aus))
            setattr(self, f"bne{layer}", nn.BatchNorm1d(n_aus * n_aus))

    def forward(self, nodes: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = nodes.shape
        end, start = _pair_indices(n, nodes.device)
        for layer in (1, 2):
            U, V, A, B, E = (getattr(self, f"{name}{layer}") for name in "UVABE")
            bn_nodes, bn_edges = getattr(self, f"bnv{layer}"), getattr(self, f"bne{layer}")
            edges = edges + torch.relu(bn_edges(A(nodes)[:, end] + B(nodes)[:, start] + E(edges)))
            # Gates: sigmoid of the edge features, normalised over each end node's incoming edges.
            gates = torch.sigmoid(edges).view(b, n, n, c).softmax(dim=2)
            messages = (gates * V(nodes)[:, start].view(b, n, n, c)).sum(dim=2) / n
            nodes = torch.relu(nodes + bn_nodes(U(nodes) + messages))
        return nodes, edges


class FacialGraph(nn.Module):
    """ANFL's FGG: kNN graph among the AU nodes (dot-product similarity) and one GCN layer."""

    def __init__(self, dim: int, n_aus: int, neighbours: int):
        super().__init__()
        self.neighbours = neighbours
        self.U = nn.Linear(dim, dim)
        self.V = nn.Linear(dim, dim)
        self.bnv = nn.BatchNorm1d(n_aus)
        for linear in (self.U, self.V):
            nn.init.normal_(linear.weight, std=math.sqrt(2.0 / dim))

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            similarity = nodes @ nodes.transpose(1, 2)
            k = min(self.neighbours, nodes.shape[1])
            threshold = similarity.topk(k, dim=-1).values[..., -1:]
            adjacency = (similarity >= threshold).float()
            inv_sqrt_degree = adjacency.sum(-1).rsqrt()
            adjacency = inv_sqrt_degree.unsqueeze(2) * adjacency * inv_sqrt_degree.unsqueeze(1)
        return torch.relu(nodes + self.bnv(adjacency @ self.V(nodes) + self.U(nodes)))


class MEGraphHead(nn.Module):
    """AFG, then FGG (stage 1) or MEFL (stage 2), then the similarity classifier."""

    def __init__(self, dim: int, n_aus: int, stage: int, neighbours: int, edge_head: bool):
        super().__init__()
        self.stage = stage
        self.class_linears = nn.ModuleList(LinearBlock(dim, dim) for _ in range(n_aus))
        self.gnn: FacialGraph | GatedGraphLayers
        if stage == 1:
            self.gnn = FacialGraph(dim, n_aus, neighbours)
        else:
            self.edge_extractor = EdgeFeatures(dim, n_aus)
            self.gnn = GatedGraphLayers(dim, n_aus)
        self.sc = nn.Parameter(torch.empty(n_aus, dim))
        nn.init.xavier_uniform_(self.sc)
        if edge_head:
            self.edge_fc = nn.Linear(dim, EDGE_CLASSES)
            nn.init.xavier_uniform_(self.edge_fc.weight)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        au_features = torch.stack([block(tokens) for block in self.class_linears], dim=1)  # (B, N, L, C)
        nodes = au_features.mean(dim=-2)
        out = {}
        if self.stage == 1:
            nodes = self.gnn(nodes)
        else:
            edges = self.edge_extractor(au_features, tokens)
            nodes, edges = self.gnn(nodes, edges)
            if hasattr(self, "edge_fc"):
                out["au_edges"] = self.edge_fc(edges)
        prototypes = F.normalize(torch.relu(self.sc), dim=-1)
        out["au"] = (F.normalize(nodes, dim=-1) * prototypes).sum(dim=-1)
        return out


def _megraph_spec(name: str, options: dict) -> EncoderSpec:
    check_positive(name, "n_aus", options["n_aus"])
    if options["neighbours"] is None:
        options = {**options, "neighbours": reference_neighbours(options["n_aus"])}
    check_positive(name, "input_size", options["input_size"])
    check_positive(name, "neighbours", options["neighbours"])
    check_choice(name, "stage", options["stage"], (1, 2))
    if options["edge_head"] and options["stage"] != 2:
        raise AffbenchError(f"Encoder {name!r}: the edge head exists only in stage 2; use stage=2 or edge_head=False.")
    heads = {"au": options["n_aus"]}
    if options["edge_head"]:
        heads["au_edges"] = EDGE_CLASSES
    return EncoderSpec(
        name=name, family="megraph", input_size=options["input_size"], mean=IMAGENET_MEAN, std=IMAGENET_STD,
        heads=heads, au_output="probabilities", options=dict(options),
    )


def _emotiram_megraph_spec(name: str, options: dict) -> EncoderSpec:
    au_options = {k: v for k, v in options.items() if k != "n_classes"}
    au_spec = _megraph_spec(name, {**au_options, "edge_head": False})
    check_positive(name, "n_classes", options["n_classes"])
    return EncoderSpec(
        name=name, family="megraph", input_size=au_spec.input_size, mean=au_spec.mean, std=au_spec.std,
        heads={"au": options["n_aus"], "expression": options["n_classes"]}, au_output="probabilities",
        options={**options, "neighbours": au_spec.options["neighbours"]},
    )


class MEGraphAU(Encoder):
    """ME-GraphAU with a ResNet-50 trunk; outputs ``au`` probabilities (and ``au_edges`` logits)."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        options = spec.options
        self.backbone = ResNet50Trunk()
        self.global_linear = LinearBlock(ResNet50Trunk.out_channels, NODE_DIM)
        self.head = MEGraphHead(
            NODE_DIM, options["n_aus"], options["stage"], options["neighbours"], options.get("edge_head", False)
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.backbone(images).flatten(2).transpose(1, 2)  # (B, HW, 2048)
        return self.head(self.global_linear(tokens))

    def load_imagenet(self) -> str:
        return self.backbone.load_imagenet()

    # -------------------------------------------------------------- key-mapping hook

    def map_checkpoint_keys(self, state, config=None):
        if any(k.startswith("head.edge_extractor.") for k in state):
            return state, "MEFL (stage 2)"
        if "head.gnn.U.weight" in state:
            return state, "ANFL (stage 1)"
        return state, "affbench"

    def expected_checkpoint_gaps(self, layout):
        # A stage-1 file in a stage-2 model (or the reverse) is not a gap: the structure follows the
        # checkpoint, and stage 2 starts from stage 1 only through ``stage1_checkpoint``.
        missing_ok, unexpected_ok = [], ["backbone.fc."]
        if layout.startswith("MEFL"):
            (missing_ok if hasattr(self.head, "edge_fc") else unexpected_ok).append("head.edge_fc.")
        return tuple(missing_ok), tuple(unexpected_ok)


class EmotiRAMFAUMEGraph(Encoder):
    """megraph-au's AU probabilities -> one FC layer -> ``expression``; outputs ``au`` too."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        au_options = {k: v for k, v in spec.options.items() if k != "n_classes"}
        au_spec = _megraph_spec("megraph-au", {**au_options, "edge_head": False})
        self.au_model = MEGraphAU(au_spec)
        self.expression_head = nn.Linear(spec.heads["au"], spec.heads["expression"])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        au = self.au_model(images)["au"]
        return {"au": au, "expression": self.expression_head(au)}

    def load_imagenet(self) -> str:
        return self.au_model.load_imagenet()


def _load_imagenet(model) -> str:
    return model.load_imagenet()


@register_encoder(spec=_megraph_spec, infer=_infer_megraph)
def megraph_au(
    *, n_aus: int = 8, input_size: int = 224, stage: int = 2, neighbours: int | None = None, edge_head: bool = False,
    pretrained=None, stage1_checkpoint=None, partial_load: bool = False,
) -> MEGraphAU:
    """ME-GraphAU (ResNet-50): AU node features (AFG), kNN facial graph (FGG), multi-dimensional edges (MEFL); DISFA 8 AUs; probabilities.

    ``neighbours`` (k of the stage-1 facial graph) defaults to the reference configs' value for the
    AU count: 3 for 8 AUs, 4 otherwise. ``pretrained=PATH`` builds the structure of the checkpoint
    (AU count, stage); ``stage1_checkpoint=PATH`` starts stage 2 from a stage-1 (ANFL) checkpoint,
    MEFL fresh, as the reference's second training stage does.
    """
    options = dict(n_aus=n_aus, input_size=input_size, stage=stage, neighbours=neighbours, edge_head=edge_head)
    model = MEGraphAU(_megraph_spec("megraph-au", options))
    if stage1_checkpoint is None:
        return apply_pretrained(model, pretrained, _load_imagenet, partial=partial_load)
    if pretrained is not None:
        raise AffbenchError("Encoder 'megraph-au': give either pretrained or stage1_checkpoint, not both.")
    if stage != 2:
        raise AffbenchError("Encoder 'megraph-au': stage1_checkpoint starts a stage-2 model; leave stage out (or stage=2).")
    if checkpoint_structure(read_state_dict(stage1_checkpoint)).get("stage") != 1:
        raise AffbenchError(
            f"Encoder 'megraph-au': stage1_checkpoint {stage1_checkpoint} is not a stage-1 (ANFL) checkpoint; "
            "pass a stage-2 checkpoint as pretrained."
        )
    load_au_checkpoint(
        model, stage1_checkpoint, source="megraph-au stage 1", prefix="", submodule=model,
        missing_ok=MEFL_PREFIXES, unexpected_ok=FGG_PREFIXES, partial=partial_load, option="stage1_checkpoint",
    )
    return model


@register_encoder(spec=_emotiram_megraph_spec, infer=_infer_emotiram_megraph)
def emotiram_fau_megraph(
    *, n_aus: int = 8, n_classes: int = 7, input_size: int = 224, stage: int = 2, neighbours: int | None = None,
    pretrained=None, au_checkpoint=None, partial_load: bool = False,
) -> EmotiRAMFAUMEGraph:
    """EmotiRAM-FAU-ME-Graph: megraph-au's AU probabilities -> one FC layer -> 7 emotions; outputs au and expression.

    ``au_checkpoint`` loads a megraph-au checkpoint (trained by affbench, or the public ME-GraphAU
    ResNet-50 one, stage 1 or 2) into the AU part, whose structure (AU count, stage) follows it; the
    expression layer starts fresh.
    """
    options = dict(n_aus=n_aus, n_classes=n_classes, input_size=input_size, stage=stage, neighbours=neighbours)
    model = EmotiRAMFAUMEGraph(_emotiram_megraph_spec("emotiram-fau-megraph", options))
    if au_checkpoint is not None:
        if pretrained is not None:
            raise AffbenchError("Encoder 'emotiram-fau-megraph': give either pretrained or au_checkpoint, not both.")
        load_au_checkpoint(
            model, au_checkpoint, source="megraph-au", prefix="au_model.", submodule=model.au_model,
            missing_ok=("expression_head.",), partial=partial_load,
        )
        return model
    return apply_pretrained(model, pretrained, _load_imagenet, partial=partial_load)
