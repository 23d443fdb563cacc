/// \file bindings.cpp
/// \brief pybind11 module nap_gpu._core: thin wrappers over the C++ core (nap/core.h).
///
/// Arrays are taken with noconvert(): a float32 C-contiguous array binds to the caller's
/// memory, anything else is a TypeError, never a silent copy that would leave the caller's
/// array stale. The GIL is released while a loop runs. Validation of values is the Python
/// layer's job (nap_gpu/_validate.py); these functions trust their inputs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "nap/core.h"

namespace py = pybind11;

namespace {

using Floats = py::array_t<float, py::array::c_style>;
using Ids = py::array_t<std::int64_t, py::array::c_style>;
using Labels = py::array_t<std::uint8_t, py::array::c_style>;
using Sums = py::array_t<std::uint64_t, py::array::c_style>;

// Parameters arrive as Python floats (float32 values held in doubles) and are narrowed here,
// in IEEE mode: a caller whose thread flushes subnormals (FTZ, set by another library) would
// otherwise turn a subnormal lr, decay or quality into 0 before the core sees it. The volatile
// reads cannot move before the (opaque) mode switch.
float narrowed(double x) {
  const nap::IeeeArithmetic ieee;
  const volatile double held = x;
  return static_cast<float>(held);
}
nap::Params params(double lr, double gate, double decay) {
  return nap::Params{narrowed(lr), narrowed(gate), narrowed(decay)};
}

void step(Floats w, Floats q, double lr, double gate, double decay) {
  if (q.size() != w.size()) throw py::value_error("step: w and q differ in length");
  float* wp = w.mutable_data();
  const float* qp = q.data();
  const auto n = static_cast<std::size_t>(w.size());
  py::gil_scoped_release nogil;
  nap::step(wp, qp, n, params(lr, gate, decay));
}

std::int64_t step_into(Floats w, Floats q, Floats out, double lr, double gate, double decay) {
  if (q.size() != w.size() || out.size() != w.size())
    throw py::value_error("step_into: w, q and out differ in length");
  const float* wp = w.data();
  const float* qp = q.data();
  float* op = out.mutable_data();
  const auto n = static_cast<std::size_t>(w.size());
  py::gil_scoped_release nogil;
  return nap::step_into(wp, qp, op, n, params(lr, gate, decay));
}

void step_scalar(Floats w, double q, double lr, double gate, double decay) {
  float* wp = w.mutable_data();
  const auto n = static_cast<std::size_t>(w.size());
  const nap::Params p = params(lr, gate, decay);
  const float quality = narrowed(q);
  py::gil_scoped_release nogil;
  nap::step_scalar(wp, quality, n, p);
}

void decay(Floats w, double d, std::uint64_t k) {
  float* wp = w.mutable_data();
  const auto n = static_cast<std::size_t>(w.size());
  const float by = narrowed(d);
  py::gil_scoped_release nogil;
  nap::decay(wp, n, by, k);
}

void update(Floats w, Ids ids, Floats q, double lr, double gate) {
  if (ids.size() != q.size()) throw py::value_error("update: ids and q differ in length");
  float* wp = w.mutable_data();
  const auto n = static_cast<std::size_t>(w.size());
  const auto m = static_cast<std::size_t>(ids.size());
  const std::int64_t* ip = ids.data();
  const float* qp = q.data();
  if (nap::first_bad_id(ip, m, static_cast<std::int64_t>(n)) >= 0)
    throw py::index_error("update: an id is outside [0, n)");  // guard; Python checks first
  py::gil_scoped_release nogil;
  nap::update(wp, n, ip, qp, m, params(lr, gate, 0.0f));
}

std::int64_t first_nonfinite(Floats x) {
  const float* xp = x.data();
  const auto n = static_cast<std::size_t>(x.size());
  py::gil_scoped_release nogil;
  return nap::first_nonfinite(xp, n);
}

std::int64_t first_bad_id(Ids ids, std::int64_t n) {
  const std::int64_t* ip = ids.data();
  const auto m = static_cast<std::size_t>(ids.size());
  py::gil_scoped_release nogil;
  return nap::first_bad_id(ip, m, n);
}

Sums exact_sums(Floats w, Labels labels) {
  if (labels.size() != w.size()) throw py::value_error("exact_sums: w and labels differ");
  Sums out({2, 512, 4});
  const float* wp = w.data();
  const std::uint8_t* lp = labels.data();
  std::uint64_t* op = out.mutable_data();
  const auto n = static_cast<std::size_t>(w.size());
  {
    py::gil_scoped_release nogil;
    nap::exact_sums(wp, lp, n, op);
  }
  return out;
}

py::tuple rank_sums(Floats w, Labels labels, std::uint32_t low_key, std::uint32_t high_key) {
  if (labels.size() != w.size()) throw py::value_error("rank_sums: w and labels differ");
  const float* wp = w.data();
  const std::uint8_t* lp = labels.data();
  const auto n = static_cast<std::size_t>(w.size());
  Sums sums({2, 512, 4});
  std::uint64_t* sp = sums.mutable_data();
  nap::RankSums r;
  {
    py::gil_scoped_release nogil;
    r = nap::rank_sums(wp, lp, n, low_key, high_key, sp);
  }
  return py::make_tuple(r.twice_u_high, r.twice_u_low, r.reinforced, r.punished, r.saturated,
                        r.min_key, r.max_key, sums);
}

void triad(Floats w, Floats q, double s) {
  if (q.size() != w.size()) throw py::value_error("triad: w and q differ in length");
  float* wp = w.mutable_data();
  const float* qp = q.data();
  const auto n = static_cast<std::size_t>(w.size());
  py::gil_scoped_release nogil;
  nap::triad(wp, qp, narrowed(s), n);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "nap_gpu C++ core: the NAP law over float32 populations (OpenMP, SIMD).";
  m.def("step", &step, py::arg("w").noconvert(), py::arg("q").noconvert(), py::arg("lr"),
        py::arg("gate"), py::arg("decay"), "Dense step in place: feedback then decay.");
  m.def("step_into", &step_into, py::arg("w").noconvert(), py::arg("q").noconvert(),
        py::arg("out").noconvert(), py::arg("lr"), py::arg("gate"), py::arg("decay"),
        "Dense step written to out with q's finite check: -1, or q's first non-finite index.");
  m.def("step_scalar", &step_scalar, py::arg("w").noconvert(), py::arg("q"), py::arg("lr"),
        py::arg("gate"), py::arg("decay"), "Dense step in place, one quality for all.");
  m.def("decay", &decay, py::arg("w").noconvert(), py::arg("decay"), py::arg("k"),
        "Passive decay k times, in place.");
  m.def("update", &update, py::arg("w").noconvert(), py::arg("ids").noconvert(),
        py::arg("q").noconvert(), py::arg("lr"), py::arg("gate"),
        "Sparse ordered batch in place: feedback only, in the order given within each id.");
  m.def("first_nonfinite", &first_nonfinite, py::arg("x").noconvert(),
        "Index of the first NaN or inf, or -1.");
  m.def("first_bad_id", &first_bad_id, py::arg("ids").noconvert(), py::arg("n"),
        "Index of the first id outside [0, n), or -1.");
  m.def("exact_sums", &exact_sums, py::arg("w").noconvert(), py::arg("labels").noconvert(),
        "Integer sums by (label, sign+exponent): count, significand, squared hi/lo halves.");
  m.def("rank_sums", &rank_sums, py::arg("w").noconvert(), py::arg("labels").noconvert(),
        py::arg("low_key"), py::arg("high_key"),
        "(2U high, 2U low, |R|, |P|, saturated, min key, max key, exact_sums) in one pass.");
  m.def("triad", &triad, py::arg("w").noconvert(), py::arg("q").noconvert(), py::arg("s"),
        "Bandwidth floor for benchmarks: w += s * q in place.");
  m.def("num_threads", &nap::num_threads, "OpenMP threads the loops use.");
  m.def("set_num_threads", &nap::set_num_threads, py::arg("n"),
        "Set the loops' thread count; n < 1 restores the OpenMP default.");
  m.def("parallel_threshold", &nap::parallel_threshold,
        "Elements from which the dense loops run on several threads (measured once, or pinned).");
  m.def("set_parallel_threshold", &nap::set_parallel_threshold, py::arg("n"),
        "Pin that threshold to n elements; 0 returns to the measured one.");
  m.def("compile_options", &nap::compile_options, "How the core was compiled.");
}
