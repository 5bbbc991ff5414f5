#!/bin/bash
# One device call: several 20 ms students side by side on the GPU under one time budget,
# each a lever aimed at how the network generalises to new speakers, against the plain
# recipe in the same call (so that all get the same number of epochs).  Run from the
# repository root with OUT=<folder for the results> and D=<folder> holding pack20.npz
# (a 20 ms feature pack), the teacher files named in TEACHERS, and cache/ with their cached
# targets for that pack (as training/sweeps/teachers_both_bins.sh returns them); carry D.
# device_setup.sh installs wheels carried in .whl/ where the machine lacks soxr/soundfile.
# Results: $OUT/students.tgz.part-* (cat them into one .tgz: a call returns only a few
# files, each under 16 MiB), holding students/<name>.pt and .log.jsonl (validation accuracy on the 22 classes per epoch);
# evaluate the models here with `spikeear evaluate`.  See docs/experiments.md.
. training/sweeps/device_setup.sh
D=${D:-runs/s14/dev}; TB=${TB:-7.0}; THREADS=${THREADS:-1}
TEACHERS=${TEACHERS:-"v64b-20ms v64c-20ms"}
CONV="--input-conv 16 9 4 --hidden-conv 32 5 2 --delays 0 1 2 3 4"
# name|seed|flags
SPECS=${SPECS:-"base-s1|1|;base-s2|2|;conv-s1|1|$CONV;conv-s2|2|$CONV;w512-s1|1|--hidden 512 512 512"}
R=$OUT/students; mkdir -p $R
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader 2>/dev/null
teachers=""; for t in $TEACHERS; do teachers="$teachers --teacher $D/$t.teacher.pt"; done
IFS=';'; for spec in $SPECS; do
  IFS='|'; set -- $spec; IFS=' '
  python3 -m app.cli train --features $D/pack20.npz --out $R/$1.pt $teachers --cache-dir $D/cache --seed $2 --time-budget-min $TB --threads $THREADS $3 > $R/$1.log 2>&1 &
  IFS=';'
done; IFS=' '
wait; echo "students done $(( $(date +%s) - T0 )) s"
for f in $R/*.log.jsonl; do
  python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(sys.argv[1], len(r), 'epochs', r[-1]['seconds'], 's/epoch, val', r[-1]['val_accuracy'], 'best', max(x['val_accuracy'] for x in r), 'train', r[-1]['train_accuracy'])" $f
done
for f in $R/*.log; do grep -a -i "error\|Traceback" $f | tail -2; done
rm -f $R/*.ckpt $R/*.log  # the logs' progress bars; .log.jsonl keeps every epoch
cd $OUT && tar czf - students | split -b 15m - students.tgz.part- && rm -rf students
echo "total $(( $(date +%s) - T0 )) s"
