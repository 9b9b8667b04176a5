# Makes libnccl loadable by a gala-gpu built with `--features nccl`. Source it, don't run it:
#
#   . bench/gpu/nccl-env.sh
#
# NCCL comes from PyPI (the `nvidia-nccl-cu13` wheel, installed here with pip for this user when
# no wheel is found). The wheel ships only `libnccl.so.2`, while cudarc 0.19 loads NCCL by the
# names libnccl.so, libnccl.so.13, … (never .so.2): so this links libnccl.so -> the wheel's
# libnccl.so.2 in a folder of its own (GALA_NCCL_LINK_DIR, default
# ~/.local/share/gala-gpu/nccl) and puts that folder first on LD_LIBRARY_PATH. Under mpirun on
# several machines, pass it on: `mpirun -x LD_LIBRARY_PATH …` (Open MPI).
_gala_nccl_dir() {
    python3 - <<'EOF'
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
for base in nvidia.__path__:
    hits = sorted(glob.glob(os.path.join(base, "**", "libnccl.so.2"), recursive=True))
    if hits:
        print(os.path.dirname(hits[0]))
        break
EOF
}
GALA_NCCL_LIB_DIR="$(_gala_nccl_dir)"
if [ -z "$GALA_NCCL_LIB_DIR" ]; then
    echo "nccl-env: no libnccl.so.2 in a Python 'nvidia' package; installing nvidia-nccl-cu13 (about 200 MB)" >&2
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --user 'nvidia-nccl-cu13' || {
        echo "nccl-env: pip install nvidia-nccl-cu13 failed" >&2
        return 1 2>/dev/null || exit 1
    }
    GALA_NCCL_LIB_DIR="$(_gala_nccl_dir)"
fi
if [ -z "$GALA_NCCL_LIB_DIR" ] || [ ! -f "$GALA_NCCL_LIB_DIR/libnccl.so.2" ]; then
    echo "nccl-env: libnccl.so.2 not found after installing nvidia-nccl-cu13" >&2
    return 1 2>/dev/null || exit 1
fi
GALA_NCCL_LINK_DIR="${GALA_NCCL_LINK_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/gala-gpu/nccl}"
mkdir -p "$GALA_NCCL_LINK_DIR" && ln -sfn "$GALA_NCCL_LIB_DIR/libnccl.so.2" "$GALA_NCCL_LINK_DIR/libnccl.so" || {
    echo "nccl-env: cannot link $GALA_NCCL_LINK_DIR/libnccl.so" >&2
    return 1 2>/dev/null || exit 1
}
export LD_LIBRARY_PATH="$GALA_NCCL_LINK_DIR:$GALA_NCCL_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "nccl-env: libnccl.so -> $GALA_NCCL_LIB_DIR/libnccl.so.2 (in $GALA_NCCL_LINK_DIR, on LD_LIBRARY_PATH)" >&2
unset -f _gala_nccl_dir
