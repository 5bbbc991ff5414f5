#!/bin/bash
# One device call: 4 teachers side by side, then students distilled from their ensemble.
# Run from the repository root with OUT=<folder for the models> (PACK=feature pack from
# `spikeear features`, default gpu/pack.npz); device_setup.sh installs wheels carried in .whl/
# where the machine lacks soxr/soundfile. Used on a lent H200; see README, Training.
. training/sweeps/device_setup.sh
PACK=${PACK:-gpu/pack.npz}; TB=${TB:-2.0}; SB=${SB:-5.0}
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader 2>/dev/null
for spec in "T1 64 11" "T2 64 12" "T3 48 13" "T4 32 14"; do
  set -- $spec
  python3 -m app.cli train --features $PACK --out $R/$1.pt --teacher-only --teacher-arch vgg --teacher-width $2 --seed $3 --teacher-epochs 80 --time-budget-min $TB > $R/$1.out 2>&1 &
done
wait; echo "teachers done $(( $(date +%s) - T0 )) s"; grep -h "teacher, validation" $R/T*.out
TEACH=""; for t in $R/T*.teacher.pt; do TEACH="$TEACH --teacher $t"; done
[ -f gpu/teacher.pt ] && TEACH="$TEACH --teacher gpu/teacher.pt"
for spec in "S0" "S2 --delays 0 2 4 6" "S3 --delays 0 3 6 9 12" "S4 --delays 0 2 4 6 --hidden 384 384" "A0 --kind analog" "A2 --kind analog --delays 0 2 4 6"; do
  set -- $spec; name=$1; shift
  python3 -m app.cli train --features $PACK --out $R/$name.pt --distill 0.7 $TEACH --time-budget-min $SB --epochs 400 "$@" > $R/$name.out 2>&1 &
done
wait; echo "students done $(( $(date +%s) - T0 )) s"
for f in $R/*.out; do echo "== $f"; grep -a "^epoch\|rror\|teacher" $f | tail -3; done
rm -f $R/*.ckpt; mv $R/*.pt $OUT/; cd $OUT && tar czf logs3.tgz r && rm -rf r; echo "total $(( $(date +%s) - T0 )) s"
