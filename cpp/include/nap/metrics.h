/// \file metrics.h
/// \brief The monitoring metrics of docs/law.md §3, equal to the last bit to Python's
/// nap_gpu.metrics.compute on the same weights and labels.
///
/// Every number is exact or correctly rounded once to float64, so it depends on neither the
/// order of summation nor the thread count:
///  - counts, means, standard deviations and the separation come from exact_sums (core.h):
///    integer sums of float32 significands by exponent, combined in exact integer arithmetic;
///  - the inversion ratio is the Mann-Whitney U over |R|·|P| (ties count one half), counted in
///    integers over the weights' float32 bits by rank_sums (core.h): O(n), no sort;
///  - saturation counts weights with w <= float32(eps) or w >= 1 - float32(eps).
/// Undefined values (an empty population, a NaN or infinite weight) are NaN, as in Python:
/// the separation, means, deviations and inversion ratio are NaN as soon as any weight is not
/// finite; min and max are NaN when a weight is NaN (an infinity is a valid extreme).
#pragma once

#include <cstddef>  // for std::size_t
#include <cstdint>  // for std::uint8_t, std::int64_t, std::uint64_t

namespace nap {

/// The saturation tolerance of nap_gpu.metrics.DEFAULT_EPS: the reinforced plateau 1 - 0.02
/// counts as saturated.
constexpr double kDefaultEps = 0.02;

/// Count, mean and population standard deviation (ddof = 0) of one label's weights.
/// count includes non-finite weights; mean and stddev are then NaN (and when count is 0).
struct PopulationStats {
  std::uint64_t count = 0;
  double mean = 0.0;
  double stddev = 0.0;
};

/// nap_gpu.metrics.Metrics, field for field.
struct Metrics {
  std::uint64_t n = 0;           ///< weights in the population
  double separation = 0.0;       ///< mean(w[R]) - mean(w[P])
  double inversion_ratio = 0.0;  ///< P(r > p) + P(r == p) / 2 over R and P memories
  double saturation = 0.0;       ///< fraction of weights within eps of 0 or 1
  PopulationStats reinforced;    ///< label 1 (R)
  PopulationStats punished;      ///< label 0 (P)
  double min = 0.0;              ///< smallest weight (never -0.0); NaN if a weight is NaN
  double max = 0.0;              ///< largest weight; NaN if a weight is NaN
  std::uint64_t nonfinite = 0;   ///< NaN and infinite weights (health fails)
  double eps = kDefaultEps;      ///< the saturation tolerance used
};

/// The metrics of weights w[0..n) with labels[i] 1 (R) or 0 (P).
/// Throws std::invalid_argument for another label or an eps outside [0, 0.5) (NaN included),
/// and std::overflow_error when 2|R| or |P| reaches 2^48 (as Python does). Requires n < 2^40.
Metrics metrics(const float* w, const std::uint8_t* labels, std::size_t n,
                double eps = kDefaultEps);

/// The metrics of a sample of the population: those of w[sample[j]], labels[sample[j]] for
/// j < m (an index drawn twice counts twice), i.e. Python's
/// metrics.compute(w[sample], labels[sample]). A host service with billions of weights reports
/// the inversion ratio of a fixed sample cheaply (O(m) instead of O(n)).
/// Throws std::out_of_range for an index outside [0, n), and as metrics() does.
Metrics sample_metrics(const float* w, const std::uint8_t* labels, std::size_t n,
                       const std::int64_t* sample, std::size_t m, double eps = kDefaultEps);

/// Python's metrics.inversion_ratio(r, p): the exact P(r > p) + P(r == p) / 2 between two
/// lists of float32 weights. NaN when a list is empty or holds a NaN; infinities rank as the
/// extremes they are (unlike metrics(), where any non-finite weight makes the ratio NaN).
double inversion_ratio(const float* r, std::size_t nr, const float* p, std::size_t np);

}  // namespace nap
