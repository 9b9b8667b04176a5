# Installs libnvrtc for CUDA 13.0 from PyPI (the `nvidia-cuda-nvrtc` wheel: no CUDA toolkit, no
# GPU needed) and puts it on LD_LIBRARY_PATH, so the NVRTC test (tests/kernels_nvrtc.rs) runs.
# Source it from .ci/run:   . .ci/install-nvrtc.sh
# (sourced, not executed, so the LD_LIBRARY_PATH export reaches the caller's cargo test).
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check 'nvidia-cuda-nvrtc==13.0.*' || {
    echo "install-nvrtc: pip install nvidia-cuda-nvrtc==13.0.* failed" >&2
    return 1 2>/dev/null || exit 1
}
# `nvidia` is a namespace package; the wheel puts the library in nvidia/cu13/lib.
GALA_NVRTC_LIB_DIR="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')"
if [ ! -f "$GALA_NVRTC_LIB_DIR/libnvrtc.so.13" ]; then
    echo "install-nvrtc: libnvrtc.so.13 not found in $GALA_NVRTC_LIB_DIR" >&2
    return 1 2>/dev/null || exit 1
fi
export LD_LIBRARY_PATH="$GALA_NVRTC_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "install-nvrtc: using $GALA_NVRTC_LIB_DIR/libnvrtc.so.13"
