"""The official SeqTrack tracker and ours, side by side on one sample sequence, one scripted network.

    git clone https://github.com/microsoft/VideoX /path/to/VideoX      # not vendored here
    python benchmarks/official_tracker.py --videox /path/to/VideoX [--frames 120] [--update-interval 10]

Runs the unmodified official `SeqTrack/lib/test/tracker/seqtrack.py` (class SEQTRACK: its own
`initialize`, `track`, `sample_target`, `Preprocessor`, `map_box_back`, `clip_box`, Hanning
window and template update) and `seqtrack_mlflow.track.tracker.SeqTrackTracker` (default
`track.geometry=official`, and `exact-corner` for comparison) on the same frames of a bundled
sample sequence, and prints the largest box difference, the largest search-crop difference
and the template-update frames of each.

Both trackers drive one scripted stand-in network: a colour tracker written here that finds,
in the search crop it is given, the pixels closest to the colour at the centre of the first
template, and answers Gaussian token distributions (bins + 2 classes, float32 softmax) around
their centroid and spread; the second template shifts the colour reference, so template updates
change the answers. The official side goes through the official decoder's last steps (keep
`bins` classes, multiply cx, cy by the tracker's window, topk); ours through the same steps as
`SeqTrack.predict`. The network depends on the crops' pixels, so any crop difference shows.

The official tracker runs on the CPU: `.cuda()` is made a no-op, `torch.load` of the
checkpoint returns an empty state dict, `build_seqtrack` returns the scripted network, and
the packages its imports need but the tracker never calls (torchvision's box_area, the model
package) get stand-ins. Not a test (the tests pin the same behaviour from the formulas).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

from seqtrack_mlflow.data.frames import read_frame
from seqtrack_mlflow.data.synthetic import ensure_sample_data
from seqtrack_mlflow.geometry import GEOMETRIES
from seqtrack_mlflow.track.tracker import SeqTrackTracker, TrackerConfig

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class AttrDict(dict):
    """The official code reads its cfg both as attributes and as items (easydict)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def distributions(templates: list[torch.Tensor], search: torch.Tensor, bins: int) -> torch.Tensor:
    """(4, bins + 2) float32 softmax distributions of cx, cy, w, h for one search crop."""
    S = search.shape[-1]
    t0, t1 = templates[0][0], templates[-1][0]  # (3, T, T)
    c = t0.shape[-1] // 2
    colour = 0.75 * t0[:, c - 2:c + 2, c - 2:c + 2].mean((1, 2)) + 0.25 * t1[:, c - 2:c + 2, c - 2:c + 2].mean((1, 2))
    d2 = ((search[0] - colour[:, None, None]) ** 2).sum(0)  # (S, S)
    weight = torch.exp(-d2 / 0.5)
    weight = weight / weight.sum().clamp_min(1e-12)
    grid = (torch.arange(S, dtype=torch.float32) + 0.5) / S
    cx, cy = (weight.sum(0) * grid).sum(), (weight.sum(1) * grid).sum()
    sx = ((weight.sum(0) * (grid - cx) ** 2).sum()).sqrt() * 3.0
    sy = ((weight.sum(1) * (grid - cy) ** 2).sum()).sqrt() * 3.0
    means = torch.stack([cx, cy, sx.clamp(0.02, 0.9), sy.clamp(0.02, 0.9)]) * (bins - 1)  # (4,)
    k = torch.arange(bins + 2, dtype=torch.float32)
    logits = -((k[None] - means[:, None]) / (0.004 * bins)) ** 2 / 2  # (4, bins + 2)
    logits[:, bins:] = -1e4  # END, START
    return logits.softmax(-1)


class OfficialScriptedNet:
    """What the official SEQTRACK calls: forward_encoder, inference_decoder (+ nn.Module bits)."""

    def __init__(self, bins: int):
        self.bins = bins
        self.searches: list[torch.Tensor] = []

    def load_state_dict(self, *a, **k):
        return None

    def cuda(self):
        return self

    def eval(self):
        return self

    def forward_encoder(self, images_list):
        return images_list

    def inference_decoder(self, xz, sequence, window=None, seq_format="xywh"):
        templates, search = xz[:-1], xz[-1]
        self.searches.append(search.clone())
        probs = distributions(templates, search, self.bins)
        seq, conf = sequence, []
        for i in range(4):  # the official decoder's steps after its softmax (lib/models/seqtrack/decoder.py)
            out = probs[i:i + 1, :self.bins]
            if i in (0, 1) and window is not None:
                out = out * window
            confidence, token = out.topk(dim=-1, k=1)
            seq = torch.cat([seq, token], dim=-1)
            conf.append(confidence)
        return {"pred_boxes": seq[:, -4:], "confidence": torch.cat(conf, dim=-1)}


class OurScriptedNet:
    """What SeqTrackTracker calls: bins and predict(templates, search, window, use_cache)."""

    def __init__(self, bins: int):
        self.bins = bins
        self.searches: list[torch.Tensor] = []

    def predict(self, templates, search, window=False, use_cache=True):
        self.searches.append(search.clone())
        probs = distributions(templates, search, self.bins)
        if isinstance(window, torch.Tensor):
            hann = window
        else:
            hann = torch.hann_window(self.bins, periodic=False, dtype=torch.float32)[None] if window else None
        tokens, conf = [], []
        for i in range(4):  # as SeqTrack.predict
            p = probs[i:i + 1, :self.bins]
            if hann is not None and i < 2:
                p = p * hann
            c, t = p.max(-1)
            tokens.append(t)
            conf.append(c)
        return torch.stack(tokens, 1), torch.stack(conf, 1)


def import_official_tracker(videox: Path):
    """The official SEQTRACK class, importable on a CPU-only machine without torchvision."""
    root = videox / "SeqTrack" if (videox / "SeqTrack").is_dir() else videox
    if not (root / "lib" / "test" / "tracker" / "seqtrack.py").is_file():
        raise SystemExit(f"{videox}: no SeqTrack/lib/test/tracker/seqtrack.py (a VideoX checkout?)")
    sys.path.insert(0, str(root))
    made = []
    if importlib.util.find_spec("torchvision") is None:
        tv = types.ModuleType("torchvision")
        tv.__version__ = "0.15.0"
        ops = types.ModuleType("torchvision.ops")
        boxes = types.ModuleType("torchvision.ops.boxes")
        boxes.box_area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        tv.ops, ops.boxes = ops, boxes
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": boxes})
        made.append("torchvision (box_area, __version__)")
    # the model package pulls in timm and the ViT; the tracker only calls build_seqtrack
    models = types.ModuleType("lib.models.seqtrack")
    models.build_seqtrack = None  # set per run
    sys.modules["lib.models.seqtrack"] = models
    made.append("lib.models.seqtrack (build_seqtrack returns the scripted network)")
    torch.Tensor.cuda = lambda self, *a, **k: self  # the official tracker calls .cuda() everywhere
    from lib.test.tracker import seqtrack as official

    return official, models, made


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videox", required=True, type=Path, help="VideoX checkout (or its SeqTrack folder)")
    p.add_argument("--sequence", default="airplane/airplane-1", help="bundled sample sequence")
    p.add_argument("--frames", type=int, default=120, help="frames to track (0 = all)")
    p.add_argument("--bins", type=int, default=4000)
    p.add_argument("--size", type=int, default=256, help="template and search crop side (official B256)")
    p.add_argument("--factor", type=float, default=4.0, help="template and search factor (official 4.0)")
    p.add_argument("--update-interval", type=int, default=10, help="official LaSOT: 450")
    p.add_argument("--update-threshold", type=float, default=0.95,
                   help="official 0.6; 0.95 sits inside this network's score range (0.9-1.0)")
    args = p.parse_args()

    official, models, made = import_official_tracker(args.videox.expanduser().resolve())
    seq = ensure_sample_data() / args.sequence
    gt = np.loadtxt(seq / "groundtruth.txt", delimiter=",", dtype=np.float64)
    n = len(gt) if args.frames <= 0 else min(args.frames, len(gt))
    frames = [read_frame(seq / "img" / f"{i + 1:08d}.jpg") for i in range(n)]

    # -- official ---------------------------------------------------------------------------------
    net = OfficialScriptedNet(args.bins)
    models.build_seqtrack = lambda cfg: net
    official.build_seqtrack = models.build_seqtrack
    cfg = AttrDict(DATA=AttrDict(SEQ_FORMAT="xywh"), MODEL=AttrDict(BINS=args.bins),
                   TEST=AttrDict(NUM_TEMPLATES=2, WINDOW=True,
                                 UPDATE_INTERVALS=AttrDict(LASOT=args.update_interval),
                                 UPDATE_THRESHOLD=AttrDict(LASOT=args.update_threshold)))
    params = types.SimpleNamespace(cfg=cfg, checkpoint="scripted", debug=0,
                                   template_factor=args.factor, template_size=args.size,
                                   search_factor=args.factor, search_size=args.size)
    load = torch.load
    torch.load = lambda *a, **k: {"net": {}}
    try:
        tracker = official.SEQTRACK(params, "lasot")
    finally:
        torch.load = load
    ref_boxes, ref_updates = [gt[0]], []
    with torch.no_grad():
        tracker.initialize(frames[0], {"init_bbox": gt[0].tolist()})
        for i in range(1, n):
            last = tracker.template_list[1]
            ref_boxes.append(np.asarray(tracker.track(frames[i])["target_bbox"], dtype=np.float64))
            if tracker.template_list[1] is not last:
                ref_updates.append(i)
    ref_boxes = np.stack(ref_boxes)

    # -- ours -------------------------------------------------------------------------------------
    rows = []
    for geometry in GEOMETRIES:
        ours = OurScriptedNet(args.bins)
        tcfg = TrackerConfig(template_factor=args.factor, template_size=args.size, search_factor=args.factor,
                             search_size=args.size, num_templates=2, geometry=geometry,
                             update_interval=args.update_interval, update_threshold=args.update_threshold)
        tr = SeqTrackTracker(ours, tcfg)
        boxes, updates = [gt[0]], []
        with torch.inference_mode():
            tr.initialize(frames[0], gt[0])
            for i in range(1, n):
                last = tr.templates[1]
                boxes.append(tr.track(frames[i]))
                if tr.templates[1] is not last:
                    updates.append(i)
        diff = np.abs(np.stack(boxes) - ref_boxes)  # (n, 4)
        crop = max(float(((a - b).abs() * STD).max()) * 255 for a, b in zip(ours.searches, net.searches))
        first = float(((ours.searches[0] - net.searches[0]).abs() * STD).mean()) * 255  # same window
        centre = lambda b: b[:, :2] + 0.5 * b[:, 2:]
        shift = np.linalg.norm(centre(np.stack(boxes)) - centre(ref_boxes), axis=1)
        rows.append((geometry, diff.max(), shift.mean(), crop, first, updates))

    print(f"official tracker: {args.videox}/SeqTrack/lib/test/tracker/seqtrack.py (unmodified)")
    print(f"stand-ins: {'; '.join(made)}")
    print(f"sequence {args.sequence}: {n} frames {frames[0].shape[1]}x{frames[0].shape[0]}, bins {args.bins}, "
          f"crops {args.size} px at factor {args.factor}, update every {args.update_interval} frames "
          f"if score > {args.update_threshold}")
    print(f"official template updates on frames {ref_updates}")
    for geometry, dmax, dmean, crop, first, updates in rows:
        same = "same" if updates == ref_updates else f"DIFFERENT: {updates}"
        print(f"ours, track.geometry={geometry:<12}: largest box difference {dmax:.6g} px, mean centre "
              f"distance {dmean:.4g} px, largest search-crop difference {crop:.4g}/255 (frame 1, same "
              f"window: mean {first:.3g}/255); updates {same}")
    ok = rows[0][1] <= 0.01 and rows[0][3] <= 1.0
    print("PASS: within 0.01 px and 1/255" if ok else "FAIL: beyond 0.01 px or 1/255")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
