#!/bin/bash
# One device call: wide teachers on 10 ms and on 20 ms bins side by side, then their logits
# for every stored clip variant (the student's cached targets), so that students train on
# a CPU without a teacher pass.  Run from the repository root with OUT=<folder for the
# results> and PACK=<a 10 ms feature pack> (`spikeear features --bin-ms 10 ...`); its 20 ms
# twin is made here by summing pairs of bins, which is exact.  device_setup.sh installs
# wheels carried in .whl/ where the machine lacks soxr/soundfile.  Results come back as
# $OUT/teachers.tgz.part-* (cat them into one .tgz; each part fits what a device call
# returns): teacher files, their logs, and cache/teacher-targets-*.npz, which
# `spikeear train --teacher ...` finds in its --cache-dir.  Used on a lent H200; see
# docs/experiments.md.
. training/sweeps/device_setup.sh
PACK=${PACK:-gpu/pack10.npz}; TB=${TB:-4.0}; EPOCHS=${EPOCHS:-120}; THREADS=${THREADS:-2}
# name, bins (ms), architecture, width, seed
SPECS=${SPECS:-"v64a 10 vgg 64 21;v64b 10 vgg 64 22;v48 10 vgg 48 23;r64 10 res 64 24;v64a 20 vgg 64 21;v64b 20 vgg 64 22;v48 20 vgg 48 23;r64 20 res 64 24"}
R=$OUT/teachers; mkdir -p $R $R/cache
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader 2>/dev/null
python3 - "$PACK" "$R/pack20.npz" <<'EOF'
import sys
import numpy as np
from audio_frontend.cochlea import CochleaConfig
from training.augment import AugmentConfig
from training.features import FeatureSet, FeatureSpec, load_pack, save_pack
meta, train, val = load_pack(sys.argv[1])
assert meta["bin_ms"] == 10, "PACK must have 10 ms bins"
def summed_pairs(part: FeatureSet) -> FeatureSet:
    r = part.rasters
    pairs = r.reshape(*r.shape[:2], -1, 2, r.shape[-1]).astype(np.uint16).sum(axis=3)
    return FeatureSet(np.minimum(pairs, 255).astype(np.uint8), part.labels, part.ok)
spec = FeatureSpec(CochleaConfig.from_dict(meta["frontend"]), 20.0,
                   augmentation=AugmentConfig(**meta["augmentation"]))
save_pack(sys.argv[2], spec, tuple(meta["vocabulary"]), summed_pairs(train), summed_pairs(val),
          meta["summaries"])
EOF
echo "20 ms pack made $(( $(date +%s) - T0 )) s"
IFS=';'; for spec in $SPECS; do
  IFS=' '; set -- $spec; IFS=';'
  pack=$PACK; [ "$2" = 20 ] && pack=$R/pack20.npz
  python3 -m app.cli train --features $pack --out $R/$1-$2ms.pt --teacher-only --teacher-arch $3 --teacher-width $4 --seed $5 --teacher-epochs $EPOCHS --time-budget-min $TB --threads $THREADS > $R/$1-$2ms.log 2>&1 &
done; IFS=' '
wait; echo "teachers done $(( $(date +%s) - T0 )) s"
for f in $R/*.log; do echo "$f: $(grep -a 'validation accuracy\|rror' $f | tail -2)"; done
python3 - "$PACK" "$R" <<'EOF'
import sys
from pathlib import Path
import numpy as np
import torch
from training.features import load_pack
from training.teacher import ConvTeacher
from training.train import cached_teacher_targets, teacher_logits
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
folder = Path(sys.argv[2])
packs = {10: load_pack(sys.argv[1]), 20: load_pack(folder / "pack20.npz")}
vocabulary = packs[10][0]["vocabulary"]
words = np.array([not w.startswith("_") for w in vocabulary])
files = sorted(folder.glob("*.teacher.pt"))
for bins, (_, train, val) in packs.items():
    # every teacher that can read these bins: its own, or finer ones it sums
    readers = {f: ConvTeacher.load(f, device, bins) for f in files
               if ConvTeacher.load(f, "cpu").bin_ms % bins == 0}
    logits = {}
    for f, teacher in readers.items():
        cached_teacher_targets(teacher, train.rasters, str(folder / "cache"))
        logits[f.name] = teacher_logits(teacher, val.rasters[:, 0])
    def report(name, z):  # an ensemble is the mean of its members' logits
        right = z.argmax(1) == val.labels
        in_vocab = words[val.labels] & val.ok
        print(f"{bins} ms input, {name}: {right[val.ok].mean():.3f} on 22 classes, "
              f"{right[in_vocab].mean():.3f} on the 20 words")
    for name, z in logits.items():
        report(name, z)
    own = [z for n, z in logits.items() if f"-{bins}ms" in n]
    report("ensemble of its own-bin teachers", np.mean(own, axis=0))
    report("ensemble of all", np.mean(list(logits.values()), axis=0))
EOF
echo "targets done $(( $(date +%s) - T0 )) s"
rm -f $R/*.ckpt $R/pack20.npz; cd $OUT && tar czf - teachers | split -b 15m - teachers.tgz.part- && rm -rf teachers; echo "total $(( $(date +%s) - T0 )) s"
