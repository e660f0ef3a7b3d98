// The Python module recsys_emb._C. It only has to exist: importing it loads this shared library, whose
// static TORCH_LIBRARY_IMPL registrations (csrc/cpu, csrc/cuda) add the compiled kernels to the ops
// declared in recsys_emb/ops/_library.py. Plain CPython API (no pybind11 / torch/extension.h) keeps the
// build fast.
#include <Python.h>

static struct PyModuleDef recsys_emb_c_module = {
    PyModuleDef_HEAD_INIT, "_C",
    "Compiled kernels of the recsys_emb::* ops (registered with the PyTorch dispatcher on import).", -1, nullptr,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&recsys_emb_c_module); }
