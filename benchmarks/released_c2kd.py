"""The released C2KD training code's structure, rewritten here as the speed reference.

Not a test and not part of the package. huofushuo/C2KD (`ave/utils/helper.py`
`train_network_distill` and `pre_train_models`, `ave/utils/model_res.py`,
`ave/utils/module.py` `Tea`/`Stu`, `ave/utils/AVEDataset.py`), read and rewritten for CPU
timing at AV-digits shapes (the V->A direction: `stu_type` 1, an audio student and an image
teacher), without an engine:

- `ReleasedNet`: torchvision's ResNet-18 layers called in the released forward's order,
  returning `(logits, pooled, layer3)` (the released `f4` is the layer3 output, which the
  proxies read); the visual net takes `[B, 3, frames, H, W]` and flattens it as the
  released one does, the audio net `[B, F, T]`.
- `ReleasedProxy`: `Tea`/`Stu`, average pool, 1x1 conv + BN + LeakyReLU(0.1), linear.
- `ReleasedDataset`: `AVEDataset.__getitem__`'s work: a spectrogram pickled beforehand
  (the released code reads `Audio-1004-SE/*.pkl` made offline; `prepare_pickles` makes them
  here with cmkd's own spectrogram so both sides see the same inputs; `np.resize` as there),
  and the image decoded by PIL with torchvision's train transform (RandomResizedCrop + flip
  + ToTensor + Normalize) on every draw.
- `distill_step`: one iteration of `train_network_distill`: both forwards, CE of both, the
  four proxy KLs (`KLDivLoss(batchmean)`), the per-sample `scipy.stats.kendalltau` loop on
  the host, the KRC mask, the two non-target KLs (`ntkl`, target logit zeroed) and the third
  one the released loop computes for its log, one backward, SGD step, the per-epoch poly lr
  and the `.item()` bookkeeping.
- `pretrain_step`: one iteration of `pre_train_models`: both networks run forward, only the
  teacher's CE is backpropagated, one SGD step over both networks' parameters.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import kendalltau
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.models import resnet18

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ReleasedNet(nn.Module):
    """`model_res.AudioNet` / `ImageNet` with ResNet-18 layers: `(logits, pooled, layer3)`."""

    def __init__(self, modality: str, num_classes: int, frames: int = 1) -> None:
        super().__init__()
        self.modality = modality
        net = resnet18(weights=None, num_classes=num_classes)
        channels = 1 if modality == "audio" else 3 * frames
        if channels != 3:
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.modality == "visual":
            b, c, t, h, w = x.size()
            x = x.permute(0, 2, 1, 3, 4).contiguous().view(b, c * t, h, w)
        else:
            x = x.unsqueeze(1)
        x = x.float()
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer3(n.layer2(n.layer1(x)))
        f3 = x
        pooled = n.avgpool(n.layer4(x)).flatten(1)
        return n.fc(pooled), pooled, f3


class ReleasedProxy(nn.Module):
    """`module.Tea` / `module.Stu`: pool the layer3 map, 1x1 conv, BN, LeakyReLU(0.1), linear."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.layer = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(0.1, inplace=True),
        )
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, f3: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer(self.avgpool(f3)).view(f3.size(0), -1))


def prepare_pickles(spectrograms: list[np.ndarray], out: Path) -> list[Path]:
    """One pickle per spectrogram, as the released data preparation writes them."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, spec in enumerate(spectrograms):
        path = out / f"{i:06d}.pkl"
        with open(path, "wb") as fh:
            pickle.dump(np.asarray(spec, dtype=np.float32), fh)
        paths.append(path)
    return paths


class ReleasedDataset(Dataset):
    """`AVEDataset`'s item: pickled spectrogram + an image decoded and transformed by PIL."""

    def __init__(
        self, pickles: list[Path], images: list[Path], labels: list[int], size: int, train: bool
    ) -> None:
        self.audio, self.image, self.label = pickles, images, labels
        self.shape: tuple[int, int] | None = None
        crop = transforms.RandomResizedCrop(size) if train else transforms.Resize((size, size))
        steps: list[Any] = [crop] + ([transforms.RandomHorizontalFlip()] if train else [])
        self.transform = transforms.Compose(
            steps + [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        )

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        with open(self.audio[idx], "rb") as fh:
            spectrogram = pickle.load(fh)
        spectrogram = np.resize(spectrogram, spectrogram.shape)
        img = self.transform(Image.open(self.image[idx]).convert("RGB"))
        images = img[None].permute(1, 0, 2, 3)  # [3, frames = 1, H, W], as the released loader
        return {"audio": spectrogram, "image": images, "label": self.label[idx]}


def adjust_lr(optimizer: torch.optim.Optimizer, epoch: int, lr: float = 1e-2, epochs: int = 100):
    cur = 1e-4 + (lr - 1e-4) * ((1 - float(epoch) / epochs) ** 0.9)
    for group in optimizer.param_groups:
        group["lr"] = cur
    return cur


def ntkl(
    logits_student: torch.Tensor,
    logits_teacher: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    criterion: nn.Module,
) -> torch.Tensor:
    """The released `ntkl`: the target logit zeroed, KL over all classes, masked batch mean."""
    gt = torch.zeros_like(logits_student).scatter_(1, target.reshape(-1, 1), 1).bool()
    p_t = F.softmax(logits_teacher * (~gt), dim=1)
    log_p_s = F.log_softmax(logits_student * (~gt), dim=1)
    if mask.sum() == 0:
        return torch.tensor(0)
    return (mask * criterion(log_p_s, p_t.detach()).sum(1)).mean()


class ReleasedDistill:
    """Networks, proxies and optimiser of `eval_overlap_tag` + `train_network_distill`."""

    def __init__(self, num_classes: int, device: torch.device, lr: float = 1e-2) -> None:
        self.device = device
        self.net = ReleasedNet("audio", num_classes).to(device)  # the student (stu_type 1)
        self.tea_model = ReleasedNet("visual", num_classes).to(device)
        self.tea = ReleasedProxy(256, num_classes).to(device)
        self.stu = ReleasedProxy(256, num_classes).to(device)
        self.optimizer = torch.optim.SGD(
            [
                {"params": self.net.parameters()},
                {"params": self.tea_model.parameters()},
                {"params": self.tea.parameters()},
                {"params": self.stu.parameters()},
            ],
            lr=lr,
            momentum=0.9,
        )
        self.batchmean = nn.KLDivLoss(reduction="batchmean")
        self.none = nn.KLDivLoss(reduction="none")
        self.krc = 0.0
        for m in (self.net, self.tea_model, self.tea, self.stu):
            m.train()

    def step(self, data: dict[str, Any], epoch: int) -> dict[str, float]:
        img = data["image"].to(self.device)
        aud = data["audio"].to(self.device)
        labels = data["label"].to(self.device)
        outputs, _, stu_fit = self.net(aud)
        pseu_label, _, tea_fit = self.tea_model(img)
        tea_logits, stu_logits = self.tea(tea_fit), self.stu(stu_fit)
        self.optimizer.zero_grad()
        xe_s = F.cross_entropy(outputs, labels, reduction="none")
        xe_t = F.cross_entropy(pseu_label, labels, reduction="none")
        kl = self.batchmean
        t_t_im = kl(F.log_softmax(tea_logits, -1), F.softmax(pseu_label.detach(), dim=-1))
        t_im_t = kl(F.log_softmax(pseu_label, -1), F.softmax(tea_logits.detach(), dim=-1))
        s_s_im = kl(F.log_softmax(stu_logits, -1), F.softmax(outputs.detach(), dim=-1))
        s_im_s = kl(F.log_softmax(outputs, -1), F.softmax(stu_logits.detach(), dim=-1))
        kendall = np.empty(tea_logits.size(0))
        for i in range(tea_logits.size(0)):
            kendall[i] = kendalltau(
                tea_logits[i, :].cpu().detach().numpy(), stu_logits[i, :].cpu().detach().numpy()
            )[0]
        kendall = torch.from_numpy(kendall).to(self.device)
        kendall_mean = kendall.mean()
        mask = torch.where(kendall > self.krc, 1, 0)
        if mask.sum() == 0:
            st_s_t = st_t_s = 0
        else:
            st_s_t = ntkl(stu_logits, tea_logits.detach(), labels, mask, self.none)
            st_t_s = ntkl(tea_logits, stu_logits.detach(), labels, mask, self.none)
        logged = ntkl(tea_logits, stu_logits, labels, mask, self.none)  # for the log only
        tmp1 = xe_t.mean() + t_t_im + st_t_s + t_im_t
        tmp2 = xe_s.mean() + s_s_im + st_s_t + s_im_s
        loss = tmp1 + tmp2
        loss.backward()
        self.optimizer.step()
        adjust_lr(self.optimizer, epoch)
        return {
            "loss": loss.item(),
            "loss1": tmp1.item(),
            "loss2": tmp2.item(),
            "corr": kendall_mean.item(),
            "num": logged.sum().item(),
        }


class ReleasedPretrain:
    """`pre_train_models`: both networks forward, the teacher's CE backpropagated."""

    def __init__(self, num_classes: int, device: torch.device, lr: float = 1e-2) -> None:
        self.device = device
        self.tea_model = ReleasedNet("visual", num_classes).to(device)
        self.stu_model = ReleasedNet("audio", num_classes).to(device)
        params = list(self.tea_model.parameters()) + list(self.stu_model.parameters())
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
        self.criterion = nn.CrossEntropyLoss()
        self.tea_model.train()
        self.stu_model.train()

    def step(self, data: dict[str, Any], epoch: int) -> dict[str, float]:
        img = data["image"].to(self.device)
        aud = data["audio"].to(self.device)
        labels = data["label"].to(self.device)
        outputs2 = self.tea_model(img)
        outputs1 = self.stu_model(aud)
        adjust_lr(self.optimizer, epoch)
        self.optimizer.zero_grad()
        tmp1 = self.criterion(outputs1[0], labels)
        tmp2 = self.criterion(outputs2[0], labels)
        tmp2.backward()
        self.optimizer.step()
        return {"loss1": tmp1.item(), "loss2": tmp2.item()}
