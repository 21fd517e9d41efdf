// pybind11 bindings for pydebias._C. Arrays cross as numpy buffers (no torch
// link): the Python layer hands over C-contiguous views and owns every output.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "grouped_moments.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using namespace pydebias;

namespace {

// Checks what the kernels assume so a wrong call fails loudly instead of reading garbage.
template <typename T>
T* checked(py::array& a, const char* name, py::ssize_t size, bool writable) {
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + ": must be C-contiguous");
    if (static_cast<py::ssize_t>(a.itemsize()) != static_cast<py::ssize_t>(sizeof(T)))
        throw py::type_error(std::string(name) + ": wrong element size");
    if (size >= 0 && a.size() != size)
        throw py::value_error(std::string(name) + ": wrong number of elements");
    if (writable && !a.writeable()) throw py::value_error(std::string(name) + ": must be writable");
    return static_cast<T*>(const_cast<void*>(a.data()));
}

size_t elem_size(Elem e) { return e == Elem::F32 ? 4 : e == Elem::F64 ? 8 : 2; }

void py_grouped_moments(py::array x, int elem, py::array groups, int64_t n_groups,
                        py::array shift, py::array count, py::array s1, py::array s2, py::array mn,
                        py::array mx) {
    if (x.ndim() != 2) throw py::value_error("features: must be 2-D (rows, neurons)");
    const Elem e = static_cast<Elem>(elem);
    if (static_cast<size_t>(x.itemsize()) != elem_size(e))
        throw py::type_error("features: element size does not match the declared dtype");
    if (!(x.flags() & py::array::c_style)) throw py::value_error("features: must be C-contiguous");
    const int64_t n = x.shape(0), m = x.shape(1), gm = n_groups * m;
    const int64_t* g = checked<const int64_t>(groups, "groups", n, false);
    const double* sh = checked<const double>(shift, "shift", m, false);
    int64_t* c = checked<int64_t>(count, "count", n_groups, true);
    double* a1 = checked<double>(s1, "s1", gm, true);
    double* a2 = checked<double>(s2, "s2", gm, true);
    double* lo = checked<double>(mn, "mn", gm, true);
    double* hi = checked<double>(mx, "mx", gm, true);
    const void* data = x.data();
    py::gil_scoped_release nogil;
    grouped_moments_accumulate(data, e, n, m, g, n_groups, sh, c, a1, a2, lo, hi);
}

}  // namespace

PYBIND11_MODULE(_C, mod) {
    mod.doc() = "pydebias native CPU kernels (C++/OpenMP)";
    py::register_exception<KernelError>(mod, "KernelError", PyExc_ValueError);
    mod.def("grouped_moments_accumulate", &py_grouped_moments, py::arg("x"), py::arg("elem"),
            py::arg("groups"), py::arg("n_groups"), py::arg("shift"), py::arg("count"),
            py::arg("s1"), py::arg("s2"), py::arg("mn"), py::arg("mx"),
            "Add the rows of x into per-group shifted moment accumulators (in place).");
    mod.def("num_threads", [] {
#ifdef _OPENMP
        return omp_get_max_threads();
#else
        return 1;
#endif
    });
}
