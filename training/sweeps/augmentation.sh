#!/bin/bash
# Short device call: does weaker batch-time augmentation help the student (it underfits)?
# Run from the repository root with OUT=<folder for the models> (PACK=feature pack from
# `spikeear features`, default gpu/pack.npz); device_setup.sh installs wheels carried in .whl/
# where the machine lacks soxr/soundfile. Used on a lent H200; see README, Training.
. training/sweeps/device_setup.sh
PACK=${PACK:-gpu/pack.npz}; SB=${SB:-2.4}
R=$OUT/r; mkdir -p $R
TEACH="--teacher ${TEACHER:-gpu/T1.teacher.pt}"
for spec in "X0" "X1 --shift-ms 140 --time-mask-ms 100" "X2 --shift-ms 140 --time-mask-ms 100 --channel-mask 4" "X3 --shift-ms 60 --time-mask-ms 40 --channel-mask 2"; do
  set -- $spec; name=$1; shift
  python3 -m app.cli train --features $PACK --out $R/$name.pt --distill 0.7 $TEACH --time-budget-min $SB --epochs 400 "$@" > $R/$name.out 2>&1 &
done
wait; echo "students done $(( $(date +%s) - T0 )) s"
for f in $R/*.out; do echo "== $f"; grep -a "^epoch\|rror" $f | tail -4; done
rm -f $R/*.ckpt $R/*.out; mv $R/*.pt $OUT/; echo "total $(( $(date +%s) - T0 )) s"
