"""GNet8 (St-Yves et al.), the published encoding model of Second Sight / MindEye2 brain correlation,
plugged into nsdbench through the weights registry (artifact `gnet8-multisubject`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nsdbench import weights
from nsdbench.errors import DataError, UsageError
from nsdbench.metrics.brain import ENCODER_BATCH as FEATURE_BATCH

GNET8_ARTIFACT = weights.register(
    weights.Artifact(
        name="gnet8-multisubject",
        description="GNet8 encoding models for NSD subjects 1-8 (St-Yves et al.; MindEye2 release, used by "
        "Second Sight / MindEye2 brain correlation)",
        kind="url",
        source="https://huggingface.co/datasets/pscotti/mindeyev2/resolve/main/gnet_multisubject.pt",
        filename="gnet_multisubject.pt",
        used_by=("second-sight-2023", "mindeye"),
    )
)


GNET8_IMAGE_SIZE = 227  # GNet8 input: PIL Lanczos to 227 px, RGB / 255, minus the checkpoint's input mean
GNET8_TRUNK_WIDTH, GNET8_PASS_THROUGH = 64, 192


def gnet8_modules(
    trunk_width: int,
    pass_through: int,
    mean: np.ndarray,
    n_voxels: int,
    widths: tuple[int, int, int] = (64, 192, 128),
    image_size: int = 227,
):
    """GNet8 (St-Yves et al. 2023): an AlexNet-like pre-filter, a trunk of BN→dropout→conv blocks giving two
    feature maps (25×25 and 13×13 at 227 px), and per voxel a softmax spatial pooling field on each map,
    log-compressed features and a linear readout. Attribute names follow the published state dicts;
    `widths` (pre-filter conv1, conv2, trunk conv3 channels) and `image_size` shrink it for `tiny` mode."""
    w1, w2, w3 = widths
    import torch
    from torch import nn

    class Trunk(nn.Module):
        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)
            self.drop1 = nn.Dropout2d(p=0.5)
            self.bn1 = nn.BatchNorm2d(cin, eps=1e-05, momentum=0.25)

        def forward(self, x):
            return torch.relu(self.conv1(self.drop1(self.bn1(x))))

    class PreFilter(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, w1, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2)
            )
            self.conv2 = nn.Sequential(nn.Conv2d(w1, w2, 5, padding=2), nn.ReLU())

        def forward(self, x):
            return self.conv2(self.conv1(x))

    class EncStage(nn.Module):
        def __init__(self, tw: int, pt: int):
            super().__init__()
            ss = tw + pt
            self.tw = tw
            self.conv3 = nn.Conv2d(w2, w3, kernel_size=3, stride=1, padding=0)
            self.drop1 = nn.Dropout2d(p=0.5)
            self.bn1 = nn.BatchNorm2d(w2, eps=1e-05, momentum=0.25)
            self.pool1 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.conv4a, self.conv5a, self.conv6a = Trunk(w3, ss), Trunk(ss, ss), Trunk(ss, ss)
            self.conv4b, self.conv5b, self.conv6b = Trunk(ss, ss), Trunk(ss, ss), Trunk(ss, tw)

        def forward(self, x):
            tw = self.tw
            c3 = torch.relu(self.conv3(self.drop1(self.bn1(x))))
            c4a = self.conv4a(c3)
            c4b = self.conv4b(c4a)
            c5a = self.conv5a(self.pool1(c4b))
            c5b = self.conv5b(c5a)
            c6a = self.conv6a(c5b)
            c6b = self.conv6b(c6a)
            return [
                torch.cat([c3, c4a[:, :tw], c4b[:, :tw]], 1),
                torch.cat([c5a[:, :tw], c5b[:, :tw], c6a[:, :tw], c6b], 1),
            ]

    class GEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.mu = nn.Parameter(torch.as_tensor(np.asarray(mean, np.float32)), requires_grad=False)
            self.pre = PreFilter()
            self.enc = EncStage(trunk_width, pass_through)

        def forward(self, x):
            return self.enc(self.pre(x - self.mu))

    def log_act(x):
        return torch.log1p(x.abs()) * torch.tanh(x)

    class Readout(nn.Module):
        def __init__(self, sizes: list[int], n_features: int):
            super().__init__()
            for k, side in enumerate(sizes):
                self.register_parameter(f"rf{k}", nn.Parameter(torch.ones(n_voxels, side, side)))
            self.n_maps = len(sizes)
            self.w = nn.Parameter(torch.randn(n_voxels, n_features) * 0.01)
            self.b = nn.Parameter(torch.randn(n_voxels) * 0.01)

        def forward(self, fmaps):
            phi = []
            for k, fm in enumerate(fmaps):
                g = torch.softmax(getattr(self, f"rf{k}").flatten(1), dim=1)  # (V, S)
                phi.append(torch.einsum("vs,bcs->vbc", g, log_act(fm.flatten(2))))
            Phi = log_act(torch.cat(phi, 2))  # (V, B, F)
            return torch.einsum("vbf,vf->bv", Phi, self.w) + self.b

    trunk = GEncoder()
    with torch.no_grad():
        fm = trunk(torch.zeros(1, 3, image_size, image_size))
    readout = Readout([int(f.shape[-1]) for f in fm], int(sum(f.shape[1] for f in fm)))
    return trunk, readout


def _read_gnet8(path: Path) -> dict:
    """torch.load(weights_only=True), allowing numpy arrays (the release stores some as ndarrays)."""
    import torch

    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 / numpy 1
    reconstruct = core.multiarray._reconstruct
    # files pickled under numpy 1 name numpy.core.*, under numpy 2 numpy._core.*: allow both spellings
    allowed: list = [
        np.ndarray,
        np.dtype,
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
    ]
    allowed += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "bool")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable/unsafe file becomes one clear error
        raise DataError(f"cannot read GNet8 weights {path} safely (weights_only): {exc}") from None


class GNet8Encoder:
    """The published GNet8 encoder of one subject (`pretrained`, from `gnet8-multisubject`), or the same
    architecture with seeded random weights (`random` / `tiny`: plumbing and timing only).

    Predictions cover the subject's voxels in the checkpoint's order, which must be the nsdgeneral voxels
    (their count is checked; the MindEye2 release orders them as NSD's nsdgeneral mask flattened in C order,
    the order nsdbench uses — not verifiable offline, see the report)."""

    def __init__(self, subject: int, n_voxels: int, weights_mode: str = "pretrained", device: str = "cpu"):
        import torch

        self.subject = int(subject)
        self.mode = weights.check_mode(weights_mode)
        self.device = device
        self.image_size = GNET8_IMAGE_SIZE if self.mode != "tiny" else 67
        if self.mode == "pretrained":
            path = weights.require(GNET8_ARTIFACT.name)
            ckpt = _read_gnet8(path)
            try:
                params = ckpt["best_params"]
                fwrf = params["fwrfs"][self.subject]
                mean = np.asarray(ckpt["input_mean"], np.float32)
            except (KeyError, TypeError) as exc:
                raise DataError(
                    f"{path}: not a GNet8 multisubject checkpoint (missing {exc}) for subject {self.subject}"
                ) from None
            nv = int(np.asarray(fwrf["w"]).shape[0])
            if nv != n_voxels:
                raise DataError(
                    f"{path}: GNet8 subject {self.subject} predicts {nv} voxels; the subject's "
                    f"nsdgeneral mask has {n_voxels}"
                )
            trunk, readout = gnet8_modules(GNET8_TRUNK_WIDTH, GNET8_PASS_THROUGH, mean, nv)
            trunk.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in params["enc"].items()})
            readout.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in fwrf.items()})
            self.sha256 = weights.recorded_sha256(GNET8_ARTIFACT.name)
        else:
            mean = np.full((1, 3, 1, 1), 0.45, np.float32)
            with weights.seeded(8):
                if self.mode == "random":
                    trunk, readout = gnet8_modules(GNET8_TRUNK_WIDTH, GNET8_PASS_THROUGH, mean, n_voxels)
                else:
                    trunk, readout = gnet8_modules(8, 8, mean, n_voxels, widths=(8, 16, 16), image_size=67)
            self.sha256 = weights.module_sha256(torch.nn.ModuleList([trunk, readout]))
        self.trunk = trunk.eval().requires_grad_(False).to(device)
        self.readout = readout.eval().requires_grad_(False).to(device)

    def predict(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """uint8 images (any size) → (N, V) float32 predicted betas, FEATURE_BATCH images per pass."""
        import torch
        from PIL import Image

        out = []
        for s in range(0, len(images), FEATURE_BATCH):
            size = self.image_size
            batch = np.zeros((FEATURE_BATCH, size, size, 3), np.float32)
            part = images[s : s + FEATURE_BATCH]
            for i, im in enumerate(part):
                im = np.asarray(im)
                if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                    raise UsageError(
                        f"GNet8: image {s + i} has shape {im.shape} dtype {im.dtype}; expected uint8 H×W×3"
                    )
                pil = Image.fromarray(np.ascontiguousarray(im)).resize((size, size), Image.Resampling.LANCZOS)
                batch[i] = np.asarray(pil, np.float32) / 255.0
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(self.device)
            with torch.inference_mode():
                out.append(self.readout(self.trunk(x))[: len(part)].float().cpu().numpy())
        if not out:
            raise UsageError("GNet8: no images given")
        return np.concatenate(out)


def load_published_encoder(
    name: str, subject: int, n_voxels: int, weights_mode: str = "pretrained", device: str = "cpu"
) -> GNet8Encoder:
    """A published encoding model plugged in through the weights registry. Known: "gnet8".

    In `pretrained` mode its artifact must be fetched first (`nsdbench weights fetch gnet8-multisubject`);
    otherwise this is a WeightsMissing error naming that command."""
    if name != "gnet8":
        raise UsageError(f"unknown published encoder {name!r}; known: gnet8")
    return GNet8Encoder(subject, n_voxels, weights_mode, device)
