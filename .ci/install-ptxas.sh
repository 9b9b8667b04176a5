# Installs ptxas for CUDA 13.0 from PyPI (the `nvidia-cuda-nvcc` wheel: no CUDA toolkit, no GPU
# needed) and exports GALA_PTXAS, so the static resource check (tests/kernels_ptxas.rs: every
# kernel through NVRTC -> PTX -> `ptxas -arch=sm_90 -v`, no spills, GEMM occupancy) runs.
# Source it from .ci/run after install-nvrtc.sh:   . .ci/install-ptxas.sh
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check 'nvidia-cuda-nvcc==13.0.*' || {
    echo "install-ptxas: pip install nvidia-cuda-nvcc==13.0.* failed" >&2
    return 1 2>/dev/null || exit 1
}
# `nvidia` is a namespace package; the wheel puts the tools in nvidia/cu13/bin.
GALA_PTXAS="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "bin", "ptxas"))')"
if [ ! -x "$GALA_PTXAS" ]; then
    echo "install-ptxas: ptxas not found at $GALA_PTXAS" >&2
    return 1 2>/dev/null || exit 1
fi
export GALA_PTXAS
echo "install-ptxas: using $GALA_PTXAS ($("$GALA_PTXAS" --version | tail -1))"
