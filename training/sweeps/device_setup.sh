# Sourced by the device scripts here, from the repository root: unbuffered output, the
# wheels carried in .whl/ where the device lacks soxr/soundfile, and the repository on
# PYTHONPATH.  Sets T0, the start time the scripts report against.
T0=$(date +%s); export PYTHONUNBUFFERED=1
python3 -c "import soxr, soundfile" 2>/dev/null || { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
