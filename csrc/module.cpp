// pybind11 bindings for pydebias._C. Arrays cross as numpy buffers (no torch
// link): the Python layer hands over C-contiguous views and owns every output.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "grouped_moments.h"
#include "widen.h"
#include "linear.h"
#include "dispersion.h"
#include "grouped_quantiles.h"
#include "radix.h"

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

// The buffer the grouped quantiles counting pass appends in-bracket values to.
void* checked_keep(py::array& keep, Elem e, int64_t needed) {
    if (static_cast<size_t>(keep.itemsize()) != (e == Elem::F64 ? 8u : 4u))
        throw py::type_error("keep: must be float64 for float64 features, else float32");
    if (!(keep.flags() & py::array::c_style)) throw py::value_error("keep: must be C-contiguous");
    if (!keep.writeable()) throw py::value_error("keep: must be writable");
    if (keep.size() < needed) throw py::value_error("keep: smaller than keep_off[-1]");
    return keep.mutable_data();
}

Elem checked_elem(py::array& x, int elem, const char* name) {
    if (x.ndim() != 2) throw py::value_error(std::string(name) + ": must be 2-D (rows, neurons)");
    const Elem e = static_cast<Elem>(elem);
    if (static_cast<size_t>(x.itemsize()) != elem_size(e))
        throw py::type_error(std::string(name) + ": element size does not match the declared dtype");
    if (!(x.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": must be C-contiguous");
    return e;
}

// The group ids and moment accumulators grouped moments and the fused moments + quantiles pass share.
struct MomentArgs {
    const int64_t* groups;
    const double* shift;
    int64_t* count;
    double *s1, *s2, *mn, *mx;
};

MomentArgs checked_moments(int64_t n, int64_t m, int64_t n_groups, py::array groups, py::array shift,
                           py::array count, py::array s1, py::array s2, py::array mn, py::array mx) {
    const int64_t gm = n_groups * m;
    return {checked<const int64_t>(groups, "groups", n, false), checked<const double>(shift, "shift", gm, false),
            checked<int64_t>(count, "count", n_groups, true), checked<double>(s1, "s1", gm, true),
            checked<double>(s2, "s2", gm, true), checked<double>(mn, "mn", gm, true),
            checked<double>(mx, "mx", gm, true)};
}

void py_grouped_moments(py::array x, int elem, py::array groups, int64_t n_groups,
                        py::array shift, py::array count, py::array s1, py::array s2, py::array mn,
                        py::array mx) {
    const Elem e = checked_elem(x, elem, "features");
    const int64_t n = x.shape(0), m = x.shape(1);
    const MomentArgs a = checked_moments(n, m, n_groups, groups, shift, count, s1, s2, mn, mx);
    const void* data = x.data();
    py::gil_scoped_release nogil;
    grouped_moments_accumulate(data, e, n, m, a.groups, n_groups, a.shift, a.count, a.s1, a.s2, a.mn, a.mx);
}

void py_quantile_brackets(py::array sample, int elem, py::array sample_groups, int64_t n_groups,
                          py::array count, py::array ranks, double z, py::array lo, py::array hi,
                          py::array mass, py::array expect) {
    const Elem e = checked_elem(sample, elem, "sample");
    const int64_t s = sample.shape(0), m = sample.shape(1);
    const int64_t q = ranks.ndim() == 3 ? ranks.shape(0) : -1;
    if (q < 0 || ranks.shape(1) != n_groups || ranks.shape(2) != 2)
        throw py::value_error("ranks: must have shape (n_levels, n_groups, 2)");
    const int64_t qgm = q * n_groups * m;
    const int64_t* sg = checked<const int64_t>(sample_groups, "sample_groups", s, false);
    const int64_t* c = checked<const int64_t>(count, "count", n_groups, false);
    const int64_t* r = checked<const int64_t>(ranks, "ranks", q * n_groups * 2, false);
    double* l = checked<double>(lo, "lo", qgm, true);
    double* h = checked<double>(hi, "hi", qgm, true);
    double* w = checked<double>(mass, "mass", qgm, true);
    int64_t* ex = checked<int64_t>(expect, "expect", qgm, true);
    const void* data = sample.data();
    py::gil_scoped_release nogil;
    quantile_brackets(data, e, s, m, sg, n_groups, c, r, q, z, l, h, w, ex);
}

// The bracket and keep-buffer arguments the two counting passes (grouped quantiles alone, moments + quantiles fused)
// share, checked once against (n_levels, n_groups, m).
struct CollectArgs {
    int64_t q;
    const double *lo, *hi, *mass;
    int64_t* cnt;
    void* keep;
    const int64_t* off;
    int64_t* fill;
};

CollectArgs checked_collect(Elem e, int64_t n_groups, int64_t m, py::array lo, py::array hi, py::array mass,
                            py::array cnt, py::array keep, py::array keep_off, py::array keep_fill) {
    if (cnt.ndim() != 4 || cnt.shape(0) != 3 || cnt.shape(2) != n_groups || cnt.shape(3) != m)
        throw py::value_error("cnt: must have shape (3, n_levels, n_groups, n_neurons)");
    CollectArgs a;
    a.q = cnt.shape(1);
    const int64_t qgm = a.q * n_groups * m;
    a.lo = checked<const double>(lo, "lo", qgm, false);
    a.hi = checked<const double>(hi, "hi", qgm, false);
    a.mass = checked<const double>(mass, "mass", qgm, false);
    a.cnt = checked<int64_t>(cnt, "cnt", 3 * qgm, true);
    a.off = checked<const int64_t>(keep_off, "keep_off", qgm + 1, false);
    a.fill = checked<int64_t>(keep_fill, "keep_fill", qgm, true);
    a.keep = checked_keep(keep, e, a.off[qgm]);
    return a;
}

void py_quantile_collect(py::array x, int elem, py::array groups, int64_t n_groups, py::array lo,
                         py::array hi, py::array mass, py::array cnt, py::array keep,
                         py::array keep_off, py::array keep_fill) {
    // rows may be strided (a sample of rows read in place); each row contiguous
    if (x.ndim() != 2) throw py::value_error("features: must be 2-D (rows, neurons)");
    const Elem e = static_cast<Elem>(elem);
    if (static_cast<size_t>(x.itemsize()) != elem_size(e))
        throw py::type_error("features: element size does not match the declared dtype");
    const int64_t n = x.shape(0), m = x.shape(1);
    if ((m > 1 && x.strides(1) != x.itemsize()) || (n > 1 && (x.strides(0) < m * x.itemsize() ||
                                                               x.strides(0) % x.itemsize())))
        throw py::value_error("features: rows must be contiguous, with a positive row stride");
    const int64_t stride = n > 1 ? x.strides(0) / x.itemsize() : m;
    const int64_t* g = checked<const int64_t>(groups, "groups", n, false);
    const CollectArgs a = checked_collect(e, n_groups, m, lo, hi, mass, cnt, keep, keep_off, keep_fill);
    const void* data = x.data();
    py::gil_scoped_release nogil;
    quantile_collect(data, e, n, m, stride, g, n_groups, a.q, a.lo, a.hi, a.mass, a.cnt, a.keep, a.off,
                     a.fill);
}

void py_moments_quantile_collect(py::array x, int elem, py::array groups, int64_t n_groups,
                                 py::array shift, py::array count, py::array s1, py::array s2,
                                 py::array mn, py::array mx, py::array lo, py::array hi,
                                 py::array mass, py::array cnt, py::array keep,
                                 py::array keep_off, py::array keep_fill) {
    const Elem e = checked_elem(x, elem, "features");
    const int64_t n = x.shape(0), m = x.shape(1);
    const MomentArgs k1 = checked_moments(n, m, n_groups, groups, shift, count, s1, s2, mn, mx);
    const CollectArgs a = checked_collect(e, n_groups, m, lo, hi, mass, cnt, keep, keep_off, keep_fill);
    const void* data = x.data();
    py::gil_scoped_release nogil;
    moments_quantile_collect(data, e, n, m, k1.groups, n_groups, k1.shift, k1.count, k1.s1, k1.s2, k1.mn,
                             k1.mx, a.q, a.lo, a.hi, a.mass, a.cnt, a.keep, a.off, a.fill);
}

void py_quantile_select(py::array count, py::array ranks, py::array mass, py::array cnt,
                        py::array keep, py::array keep_off, py::array keep_fill, py::array lower,
                        py::array higher, py::array miss) {
    if (cnt.ndim() != 4 || cnt.shape(0) != 3)
        throw py::value_error("cnt: must have shape (3, n_levels, n_groups, n_neurons)");
    const int64_t q = cnt.shape(1), G = cnt.shape(2), m = cnt.shape(3), qgm = q * G * m;
    const int64_t* c = checked<const int64_t>(count, "count", G, false);
    const int64_t* r = checked<const int64_t>(ranks, "ranks", q * G * 2, false);
    const double* w = checked<const double>(mass, "mass", qgm, false);
    const int64_t* cn = checked<const int64_t>(cnt, "cnt", 3 * qgm, false);
    const int64_t* off = checked<const int64_t>(keep_off, "keep_off", qgm + 1, false);
    const int64_t* fill = checked<const int64_t>(keep_fill, "keep_fill", qgm, false);
    if (keep.itemsize() != 4 && keep.itemsize() != 8) throw py::type_error("keep: must be float32 or float64");
    const bool wide = keep.itemsize() == 8;
    const void* kp = keep.data();
    if (!(keep.flags() & py::array::c_style)) throw py::value_error("keep: must be C-contiguous");
    if (keep.size() < off[qgm]) throw py::value_error("keep: smaller than keep_off[-1]");
    double* lw = checked<double>(lower, "lower", qgm, true);
    double* hg = checked<double>(higher, "higher", qgm, true);
    uint8_t* ms = checked<uint8_t>(miss, "miss", qgm, true);
    py::gil_scoped_release nogil;
    quantile_select(q, G, m, c, r, w, cn, kp, wide, off, fill, lw, hg, ms);
}

}  // namespace

namespace {

void py_dispersion(py::array x, int elem, py::array labels, int64_t n_classes, py::array centroids,
                   py::array owner, int64_t row_offset, py::array count, py::array sum_a,
                   py::array sum_s, py::array n_out, py::object nearest) {
    const Elem e = checked_elem(x, elem, "x");
    const int64_t n = x.shape(0), m = x.shape(1);
    if (centroids.ndim() != 2 || centroids.shape(1) != m)
        throw py::value_error("centroids: must have shape (k, n_neurons of x)");
    if (static_cast<size_t>(centroids.itemsize()) != (e == Elem::F64 ? 8u : 4u))
        throw py::type_error("centroids: must be float64 for float64 x, else float32");
    const int64_t k = centroids.shape(0);
    if (!(centroids.flags() & py::array::c_style)) throw py::value_error("centroids: must be C-contiguous");
    const void* cp = centroids.data();
    const int64_t* y = checked<const int64_t>(labels, "labels", n, false);
    const int64_t* own = checked<const int64_t>(owner, "owner", k, false);
    int64_t* c = checked<int64_t>(count, "count", n_classes, true);
    double* sa = checked<double>(sum_a, "sum_a", n_classes, true);
    double* ss = checked<double>(sum_s, "sum_s", n_classes, true);
    int64_t* no = checked<int64_t>(n_out, "n_out", n_classes, true);
    int64_t* near = nullptr;
    if (!nearest.is_none()) {
        py::array na = nearest.cast<py::array>();
        near = checked<int64_t>(na, "nearest", n, true);
    }
    const void* data = x.data();
    py::gil_scoped_release nogil;
    dispersion_accumulate(data, e, n, m, y, n_classes, cp, k, own, row_offset, c, sa, ss, no, near);
}

void py_class_sums(py::array x, int elem, py::array labels, int64_t n_classes, py::array count,
                   py::array sums) {
    const Elem e = checked_elem(x, elem, "x");
    const int64_t n = x.shape(0), m = x.shape(1);
    const int64_t* y = checked<const int64_t>(labels, "labels", n, false);
    int64_t* c = checked<int64_t>(count, "count", n_classes, true);
    double* s = checked<double>(sums, "sums", n_classes * m, true);
    const void* data = x.data();
    py::gil_scoped_release nogil;
    class_sums_accumulate(data, e, n, m, y, n_classes, c, s);
}

void py_widen(py::array in, int elem, py::array out) {
    if (!(in.flags() & py::array::c_style) || in.itemsize() != 2)
        throw py::value_error("x: expected a C-contiguous array of 16-bit floats (as uint16)");
    float* o = checked<float>(out, "out", in.size(), true);
    const uint16_t* p = static_cast<const uint16_t*>(in.data());
    const int64_t n = in.size();
    py::gil_scoped_release nogil;
    widen(p, static_cast<Elem>(elem), o, n);
}

// Cell regions [off[c], off[c] + live[c]) must lie inside an array of `size` elements.
void check_regions(py::array& off, py::array& live, int64_t size, int64_t n_cells) {
    const int64_t* o = checked<int64_t>(off, "off", -1, false);
    const int64_t* l = checked<int64_t>(live, "live", n_cells, false);
    if (off.size() < n_cells) throw py::value_error("off: expected at least one offset per cell");
    for (int64_t c = 0; c < n_cells; ++c)
        if (o[c] < 0 || l[c] < 0 || o[c] + l[c] > size)
            throw py::value_error("off, live: cell " + std::to_string(c) + " reaches outside the array");
}

void py_radix_keys(py::array values, py::array keys) {
    const bool wide = values.itemsize() == 8;
    if (!(values.flags() & py::array::c_style) || (values.itemsize() != 4 && !wide))
        throw py::type_error("values: expected a C-contiguous float32 or float64 array");
    void* k = wide ? static_cast<void*>(checked<uint64_t>(keys, "keys", values.size(), true))
                   : static_cast<void*>(checked<uint32_t>(keys, "keys", values.size(), true));
    const void* v = values.data();
    const int64_t n = values.size();
    py::gil_scoped_release nogil;
    radix_keys(v, wide ? Elem::F64 : Elem::F32, n, k);
}

template <typename K>
void key_range_typed(py::array& keys, py::array& off, py::array& live, py::array& kmin, py::array& kmax) {
    const int64_t n_cells = live.size();
    check_regions(off, live, keys.size(), n_cells);
    const K* k = checked<K>(keys, "keys", -1, false);
    const int64_t* o = checked<int64_t>(off, "off", -1, false);
    const int64_t* l = checked<int64_t>(live, "live", n_cells, false);
    K* lo = checked<K>(kmin, "kmin", n_cells, true);
    K* hi = checked<K>(kmax, "kmax", n_cells, true);
    py::gil_scoped_release nogil;
    key_range<K>(k, o, l, n_cells, lo, hi);
}

void py_key_range(py::array keys, py::array off, py::array live, py::array kmin, py::array kmax) {
    if (keys.itemsize() != 4 && keys.itemsize() != 8) throw py::type_error("keys: expected uint32 or uint64");
    if (keys.itemsize() == 4)
        key_range_typed<uint32_t>(keys, off, live, kmin, kmax);
    else
        key_range_typed<uint64_t>(keys, off, live, kmin, kmax);
}

template <typename K>
void radix_round_typed(py::array& keys, py::array& off, py::array& live, py::array& base, py::array& span,
                       py::array& prefix, int shift, int digit_bits, py::array& hist) {
    K* k = checked<K>(keys, "keys", -1, true);
    const int64_t n_cells = live.size();
    check_regions(off, live, keys.size(), n_cells);
    const int64_t* o = checked<int64_t>(off, "off", -1, false);
    int64_t* l = checked<int64_t>(live, "live", n_cells, true);
    const K* b = checked<K>(base, "base", n_cells, false);
    const K* sp = checked<K>(span, "span", n_cells, false);
    const K* p = checked<K>(prefix, "prefix", n_cells, false);
    int32_t* h = checked<int32_t>(hist, "hist", n_cells << digit_bits, true);
    py::gil_scoped_release nogil;
    radix_round<K>(k, o, l, b, sp, p, n_cells, shift, digit_bits, h);
}

void py_radix_round(py::array keys, py::array off, py::array live, py::array base, py::array span, py::array prefix,
                    int shift, int digit_bits, py::array hist) {
    const int bits = static_cast<int>(keys.itemsize()) * 8;
    if (bits != 32 && bits != 64) throw py::type_error("keys: expected uint32 or uint64");
    if (prefix.itemsize() != keys.itemsize() || base.itemsize() != keys.itemsize() ||
        span.itemsize() != keys.itemsize())
        throw py::type_error("base, span, prefix: expected the keys' unsigned type");
    if (digit_bits < 1 || digit_bits > 16) throw py::value_error("digit_bits: expected 1 to 16");
    if (shift < 0 || shift + digit_bits > bits) throw py::value_error("shift: the digit must lie inside the key");
    if (bits == 32)
        radix_round_typed<uint32_t>(keys, off, live, base, span, prefix, shift, digit_bits, hist);
    else
        radix_round_typed<uint64_t>(keys, off, live, base, span, prefix, shift, digit_bits, hist);
}

void py_radix_choose(py::array hist, int digit_bits, int shift, py::array k, py::array prefix) {
    const int64_t n_cells = k.size();
    if (digit_bits < 1 || digit_bits > 16) throw py::value_error("digit_bits: expected 1 to 16");
    const int32_t* h = checked<int32_t>(hist, "hist", n_cells << digit_bits, false);
    int64_t* kk = checked<int64_t>(k, "k", n_cells, true);
    const int bits = static_cast<int>(prefix.itemsize()) * 8;
    if ((bits != 32 && bits != 64) || shift < 0 || shift + digit_bits > bits)
        throw py::value_error("prefix, shift: expected uint32/uint64 prefixes and a digit inside them");
    if (bits == 32) {
        uint32_t* p = checked<uint32_t>(prefix, "prefix", n_cells, true);
        py::gil_scoped_release nogil;
        radix_choose<uint32_t>(h, n_cells, digit_bits, shift, kk, p);
    } else {
        uint64_t* p = checked<uint64_t>(prefix, "prefix", n_cells, true);
        py::gil_scoped_release nogil;
        radix_choose<uint64_t>(h, n_cells, digit_bits, shift, kk, p);
    }
}

int64_t py_count_bracket(py::array values, py::array off, py::array live, py::array lo, py::array hi,
                         py::array out) {
    const bool wide = values.itemsize() == 8;
    if (!(values.flags() & py::array::c_style) || (values.itemsize() != 4 && !wide))
        throw py::type_error("values: expected a C-contiguous float32 or float64 array");
    const int64_t n_cells = live.size();
    check_regions(off, live, values.size(), n_cells);
    const int64_t* o = checked<int64_t>(off, "off", -1, false);
    const int64_t* l = checked<int64_t>(live, "live", n_cells, false);
    const double* a = checked<double>(lo, "lo", n_cells, false);
    const double* b = checked<double>(hi, "hi", n_cells, false);
    int64_t* c = checked<int64_t>(out, "out", 4 * n_cells, true);
    const void* v = values.data();
    py::gil_scoped_release nogil;
    return count_bracket(v, wide ? Elem::F64 : Elem::F32, o, l, a, b, n_cells, c);
}


void py_linear_argmax(py::array x, int elem, py::array weight, py::array bias, py::array out) {
    const Elem e = checked_elem(x, elem, "x");
    const int64_t n = x.shape(0), m = x.shape(1);
    if (weight.ndim() != 2 || weight.shape(1) != m)
        throw py::value_error("weight: expected shape (n_classes, " + std::to_string(m) + ")");
    const int64_t C = weight.shape(0);
    const float* w = checked<const float>(weight, "weight", C * m, false);
    const float* b = checked<const float>(bias, "bias", C, false);
    int64_t* o = checked<int64_t>(out, "out", n, true);
    const void* data = x.data();
    py::gil_scoped_release nogil;
    linear_argmax(data, e, n, m, w, b, C, o);
}

}  // namespace

PYBIND11_MODULE(_C, mod) {
    mod.doc() = "pydebias native CPU kernels (C++/OpenMP)";
    py::register_exception<KernelError>(mod, "KernelError", PyExc_ValueError);
    mod.def("grouped_moments_accumulate", &py_grouped_moments, py::arg("x"), py::arg("elem"),
            py::arg("groups"), py::arg("n_groups"), py::arg("shift"), py::arg("count"),
            py::arg("s1"), py::arg("s2"), py::arg("mn"), py::arg("mx"),
            "Add the rows of x into per-group shifted moment accumulators (in place).");
    mod.def("quantile_brackets", &py_quantile_brackets, py::arg("sample"), py::arg("elem"),
            py::arg("sample_groups"), py::arg("n_groups"), py::arg("count"), py::arg("ranks"),
            py::arg("z"), py::arg("lo"), py::arg("hi"), py::arg("mass"), py::arg("expect"),
            "grouped quantiles phase 1: per (level, group, neuron) brackets [lo, hi] from a sample of rows.");
    mod.def("quantile_collect", &py_quantile_collect, py::arg("x"), py::arg("elem"),
            py::arg("groups"), py::arg("n_groups"), py::arg("lo"), py::arg("hi"), py::arg("mass"),
            py::arg("cnt"), py::arg("keep"), py::arg("keep_off"), py::arg("keep_fill"),
            "grouped quantiles phase 2: count rows against the brackets and keep the values inside (in place).");
    mod.def("moments_quantile_collect", &py_moments_quantile_collect, py::arg("x"),
            py::arg("elem"), py::arg("groups"), py::arg("n_groups"), py::arg("shift"),
            py::arg("count"), py::arg("s1"), py::arg("s2"), py::arg("mn"), py::arg("mx"),
            py::arg("lo"), py::arg("hi"), py::arg("mass"), py::arg("cnt"), py::arg("keep"),
            py::arg("keep_off"), py::arg("keep_fill"),
            "grouped moments + grouped quantiles phase 2 in one read of contiguous rows: moments and bracket counts/keeps.");
    mod.def("quantile_select", &py_quantile_select, py::arg("count"), py::arg("ranks"),
            py::arg("mass"), py::arg("cnt"), py::arg("keep"), py::arg("keep_off"),
            py::arg("keep_fill"), py::arg("lower"), py::arg("higher"), py::arg("miss"),
            "grouped quantiles phase 3: the order statistics of the target ranks; miss=1 where a bracket missed.");
    mod.def("dispersion_accumulate", &py_dispersion, py::arg("x"), py::arg("elem"),
            py::arg("labels"), py::arg("n_classes"), py::arg("centroids"), py::arg("owner"),
            py::arg("row_offset"), py::arg("count"), py::arg("sum_a"), py::arg("sum_s"),
            py::arg("n_out"), py::arg("nearest"),
            "clustering: add rows' own-class distance, silhouette and outlier counts per class (in place).");
    mod.def("class_sums_accumulate", &py_class_sums, py::arg("x"), py::arg("elem"),
            py::arg("labels"), py::arg("n_classes"), py::arg("count"), py::arg("sums"),
            "clustering: add rows into per-class float64 sums (in place; thread- and chunk-invariant).");
    mod.def("widen", &py_widen, py::arg("x"), py::arg("elem"), py::arg("out"),
            "float16/bfloat16 bits (uint16) -> float32, exactly, into out (in place).");
    mod.def("radix_keys", &py_radix_keys, py::arg("values"), py::arg("keys"),
            "order-preserving uint32/uint64 keys of float32/float64 values, into keys (in place).");
    mod.def("key_range", &py_key_range, py::arg("keys"), py::arg("off"), py::arg("live"), py::arg("kmin"),
            py::arg("kmax"), "per cell region, the smallest and largest key, into kmin and kmax (in place).");
    mod.def("radix_round", &py_radix_round, py::arg("keys"), py::arg("off"), py::arg("live"), py::arg("base"),
            py::arg("span"), py::arg("prefix"), py::arg("shift"), py::arg("digit_bits"), py::arg("hist"),
            "radix select round: per cell region, count the digit at shift of the keys (less the cell's base, "
            "at most span) matching the prefix above it into hist and compact them (live updated in place).");
    mod.def("radix_choose", &py_radix_choose, py::arg("hist"), py::arg("digit_bits"), py::arg("shift"),
            py::arg("k"), py::arg("prefix"),
            "radix select: per cell, the digit of the bin holding rank k into prefix at shift; k becomes the "
            "rank within it (both in place).");
    mod.def("count_bracket", &py_count_bracket, py::arg("values"), py::arg("off"), py::arg("live"), py::arg("lo"),
            py::arg("hi"), py::arg("out"),
            "per cell region, #(v < lo), #(v <= lo), #(v < hi), #(v <= hi) into out (4, cells); returns the "
            "number of NaN values.");
    mod.def("linear_argmax", &py_linear_argmax, py::arg("x"), py::arg("elem"), py::arg("weight"),
            py::arg("bias"), py::arg("out"),
            "argmax_c(x . weight[c] + bias[c]) per row of float32/16-bit x, into out (in place).");
    mod.def("num_threads", [] {
#ifdef _OPENMP
        return omp_get_max_threads();
#else
        return 1;
#endif
    });
}
