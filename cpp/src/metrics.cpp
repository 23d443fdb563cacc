/// \file metrics.cpp
/// \brief nap/metrics.h: the metrics of nap_gpu/metrics.py, in the same exact arithmetic.
///
/// Python combines exact_sums' integer bins with arbitrary-precision integers and rounds each
/// result once (int / int and Fraction -> float are correctly rounded). Here a small unsigned
/// multiword integer (Big) does the same, portably (MSVC has no __int128), and to_double
/// rounds a ratio of two of them to nearest, ties to even, with integer operations only, so the
/// caller's floating-point rounding mode cannot change a bit.
#include "nap/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "nap/core.h"
#include "nap/law.h"

namespace nap {
namespace {

// -- Big: an unsigned integer of any size, 32-bit limbs, least significant first -------------

class Big {
 public:
  Big() = default;
  explicit Big(std::uint64_t v) {
    for (; v; v >>= 32) limbs_.push_back(static_cast<std::uint32_t>(v));
  }

  bool zero() const { return limbs_.empty(); }
  std::size_t bit_length() const {
    if (limbs_.empty()) return 0;
    std::size_t bits = 32 * (limbs_.size() - 1);
    for (std::uint32_t top = limbs_.back(); top; top >>= 1) ++bits;
    return bits;
  }
  /// The low 64 bits.
  std::uint64_t low64() const {
    std::uint64_t v = 0;
    for (std::size_t i = std::min<std::size_t>(limbs_.size(), 2); i-- > 0;) v = (v << 32) | limbs_[i];
    return v;
  }

  friend int compare(const Big& a, const Big& b) {
    if (a.limbs_.size() != b.limbs_.size()) return a.limbs_.size() < b.limbs_.size() ? -1 : 1;
    for (std::size_t i = a.limbs_.size(); i-- > 0;) {
      if (a.limbs_[i] != b.limbs_[i]) return a.limbs_[i] < b.limbs_[i] ? -1 : 1;
    }
    return 0;
  }

  Big& operator+=(const Big& b) {
    limbs_.resize(std::max(limbs_.size(), b.limbs_.size()) + 1, 0);
    std::uint64_t carry = 0;
    for (std::size_t i = 0; i < limbs_.size(); ++i) {
      carry += std::uint64_t{limbs_[i]} + (i < b.limbs_.size() ? b.limbs_[i] : 0u);
      limbs_[i] = static_cast<std::uint32_t>(carry);
      carry >>= 32;
    }
    return trim();
  }
  /// *this - b; requires *this >= b.
  Big& operator-=(const Big& b) {
    std::int64_t borrow = 0;
    for (std::size_t i = 0; i < limbs_.size(); ++i) {
      std::int64_t d = std::int64_t{limbs_[i]} - (i < b.limbs_.size() ? b.limbs_[i] : 0u) - borrow;
      borrow = d < 0;
      limbs_[i] = static_cast<std::uint32_t>(d + (borrow << 32));
    }
    return trim();
  }
  friend Big operator*(const Big& a, const Big& b) {
    Big out;
    if (a.zero() || b.zero()) return out;
    out.limbs_.assign(a.limbs_.size() + b.limbs_.size(), 0);
    for (std::size_t i = 0; i < a.limbs_.size(); ++i) {
      std::uint64_t carry = 0;
      for (std::size_t j = 0; j < b.limbs_.size(); ++j) {
        carry += std::uint64_t{a.limbs_[i]} * b.limbs_[j] + out.limbs_[i + j];
        out.limbs_[i + j] = static_cast<std::uint32_t>(carry);
        carry >>= 32;
      }
      out.limbs_[i + b.limbs_.size()] = static_cast<std::uint32_t>(carry);
    }
    out.trim();
    return out;
  }
  friend Big operator<<(const Big& a, std::size_t s) {
    Big out;
    if (a.zero()) return out;
    out.limbs_.assign(a.limbs_.size() + s / 32 + 1, 0);
    for (std::size_t i = 0; i < a.limbs_.size(); ++i) {
      const std::uint64_t v = std::uint64_t{a.limbs_[i]} << (s % 32);
      out.limbs_[i + s / 32] |= static_cast<std::uint32_t>(v);
      out.limbs_[i + s / 32 + 1] |= static_cast<std::uint32_t>(v >> 32);
    }
    out.trim();
    return out;
  }
  void set_bit(std::size_t i) {
    if (limbs_.size() <= i / 32) limbs_.resize(i / 32 + 1, 0);
    limbs_[i / 32] |= 1u << (i % 32);
  }

 private:
  Big& trim() {
    while (!limbs_.empty() && limbs_.back() == 0) limbs_.pop_back();
    return *this;
  }
  std::vector<std::uint32_t> limbs_;
};

Big operator+(Big a, const Big& b) { return a += b; }

/// a / b by binary long division (b > 0): the quotient; *a becomes the remainder. The numbers
/// here have a few hundred bits, so a bit at a time is fast enough.
Big divide(Big* a, const Big& b) {
  Big q;
  const std::size_t la = a->bit_length(), lb = b.bit_length();
  if (la < lb) return q;
  for (std::size_t s = la - lb + 1; s-- > 0;) {
    const Big shifted = b << s;
    if (compare(*a, shifted) >= 0) {
      *a -= shifted;
      q.set_bit(s);
    }
  }
  return q;
}

/// The float64 nearest to (negative ? -1 : 1) * a / b, ties to even (b > 0): a quotient of 55
/// or 56 bits, its last bit made sticky by a nonzero remainder, rounded to 53 bits in integers.
/// Exact for results in the normal range (every metric is: |x| >= 2^-400 or 0).
double to_double(bool negative, const Big& a, const Big& b) {
  if (a.zero()) return 0.0;  // +0.0, as float(Fraction(0))
  const long e = static_cast<long>(a.bit_length()) - static_cast<long>(b.bit_length());
  const long s = 55 - e;  // a * 2^s / b lies in [2^54, 2^56)
  Big rest = s >= 0 ? a << static_cast<std::size_t>(s) : a;
  const Big q = divide(&rest, s >= 0 ? b : b << static_cast<std::size_t>(-s));
  std::uint64_t bits = q.low64() | (rest.zero() ? 0u : 1u);
  const int drop = q.bit_length() == 56 ? 3 : 2;
  const std::uint64_t half = std::uint64_t{1} << (drop - 1), low = bits & ((half << 1) - 1);
  bits >>= drop;
  if (low > half || (low == half && (bits & 1u))) ++bits;  // may reach 2^53: still exact
  const double magnitude = std::ldexp(static_cast<double>(bits), static_cast<int>(drop - s));
  return negative ? -magnitude : magnitude;
}

/// floor(sqrt(x)), digit by digit (two bits at a time).
Big isqrt(const Big& x) {
  Big root, rest = x;
  std::size_t shift = x.bit_length() + (x.bit_length() & 1);
  while (shift >= 2) {
    shift -= 2;
    const Big trial = ((root << 2) + Big(1)) << shift;  // (4 root + 1) 2^shift
    root = root << 1;
    if (compare(rest, trial) >= 0) {
      rest -= trial;
      root += Big(1);
    }
  }
  return root;
}

/// The float64 nearest to sqrt(num / den) (num, den > 0), rounded once: the integer root of
/// num 4^k / den has at least 57 bits, so its last bit can carry "inexact" (as Python's _sqrt).
double sqrt_to_double(const Big& num, const Big& den) {
  if (num.zero()) return 0.0;
  const long gap = static_cast<long>(den.bit_length()) - static_cast<long>(num.bit_length());
  const std::size_t k = static_cast<std::size_t>(std::max(0L, (116 + gap) / 2 + 1));
  Big scaled = num << (2 * k);
  const bool inexact_division = [&] {
    Big rest = scaled;
    scaled = divide(&rest, den);
    return !rest.zero();
  }();
  Big root = isqrt(scaled);
  if (inexact_division || compare(root * root, scaled) != 0) root.set_bit(0);
  return to_double(false, root, Big(1) << k);
}

double nan() { return std::numeric_limits<double>::quiet_NaN(); }  // 0x7ff8..., as math.nan

// -- Populations from exact_sums' bins (Python's _population) ---------------------------------

/// A label's exact sums: value = total / 2^149 summed, square = total_sq / 2^298.
struct Exact {
  std::uint64_t count = 0, nonfinite = 0;
  Big positive, negative, total_sq;  // total = positive - negative
};

constexpr std::size_t kScale = 149;  // 2^-149 is the float32 quantum
constexpr std::size_t kKeysPerLabel = kExactBins / 2;  // sign and biased exponent: 512

Exact population(const std::uint64_t* bins) {  // kKeysPerLabel keys x 4 sums of one label
  Exact x;
  for (std::size_t key = 0; key < kKeysPerLabel; ++key) {
    const std::uint64_t* b = bins + 4 * key;
    if (b[0] == 0) continue;
    const std::size_t exponent = key & 0xFF;
    if (exponent == 0xFF) {
      x.nonfinite += b[0];
      continue;
    }
    const std::size_t shift = std::max<std::size_t>(exponent, 1) - 1;  // sig * 2^(shift - 149)
    x.count += b[0];
    (key >> 8 ? x.negative : x.positive) += Big(b[1]) << shift;
    x.total_sq += ((Big(b[2]) << 24) + Big(b[3])) << (2 * shift);
  }
  return x;
}

/// positive - negative as (sign, magnitude).
bool signed_total(const Exact& x, Big* magnitude) {
  const bool negative = compare(x.positive, x.negative) < 0;
  *magnitude = negative ? x.negative : x.positive;
  *magnitude -= negative ? x.positive : x.negative;
  return negative;
}

PopulationStats stats(const Exact& x) {
  PopulationStats s{x.count + x.nonfinite, nan(), nan()};
  if (x.count == 0 || x.nonfinite) return s;
  Big total;
  const bool negative = signed_total(x, &total);
  const Big count(x.count);
  s.mean = to_double(negative, total, count << kScale);
  // var = total_sq / (c 2^298) - (total / (c 2^149))^2 = (total_sq c - total^2) / (c^2 2^298)
  Big var = x.total_sq * count;
  var -= total * total;
  s.stddev = sqrt_to_double(var, (count * count) << (2 * kScale));
  return s;
}

/// mean(R) - mean(P) = (tR cP - tP cR) / (cR cP 2^149), rounded once.
double separation(const Exact& r, const Exact& p) {
  Big tr, tp;
  const bool neg_r = signed_total(r, &tr), neg_p = signed_total(p, &tp);
  const Big a = tr * Big(p.count), b = tp * Big(r.count);  // signed: neg_r, neg_p
  const Big den = (Big(r.count) * Big(p.count)) << kScale;
  if (neg_r != neg_p) return to_double(neg_r, a + b, den);  // a - b with -b of a's sign
  const bool b_larger = compare(a, b) < 0;
  Big diff = b_larger ? b : a;
  diff -= b_larger ? a : b;
  return to_double(neg_r != b_larger, diff, den);
}

// -- Keys, the inversion ratio, saturation -----------------------------------------------------
// Python's _keys (nap/law.h metric_key): float32 bits as uint32 in the order of the values,
// -0.0 with +0.0's key; NaNs lie beyond the infinities' keys.

std::uint32_t key_of(float x) { return metric_key(bits_of(x)); }

float value_of(std::uint32_t key) { return float_of_bits((key >> 31) ? (key & 0x7FFFFFFFu) : ~key); }

bool nan_key(std::uint32_t key) { return key < kKeyNegInf || key > kKeyPosInf; }

constexpr std::uint64_t kDotLimit = std::uint64_t{1} << 48;  // Python's _DOT_LIMIT

/// U / (|R| |P|) from rank_sums' 2U (core.h), rounded once; NaN when a label has no weight.
double ratio(const RankSums& s) {
  if (!s.reinforced || !s.punished) return nan();
  if (2 * s.reinforced >= kDotLimit || s.punished >= kDotLimit) {
    throw std::overflow_error("nap::metrics: populations of " + std::to_string(s.reinforced) +
                              " and " + std::to_string(s.punished) + " weights exceed the exact "
                              "inversion ratio's range (2|R| and |P| below 2^48)");
  }
  const Big twice_u = (Big(s.twice_u_high) << 64) + Big(s.twice_u_low);
  return to_double(false, twice_u, Big(2 * s.reinforced) * Big(s.punished));
}

std::uint32_t saturation_key_low(double eps) { return key_of(static_cast<float>(eps)); }
std::uint32_t saturation_key_high(double eps) { return key_of(1.0f - static_cast<float>(eps)); }

void check_eps(double eps) {
  if (!(eps >= 0.0 && eps < 0.5)) {  // NaN fails too; from 0.5 on, a weight would count twice
    throw std::invalid_argument("nap::metrics: eps must lie in [0, 0.5), got " + std::to_string(eps));
  }
}

void check_labels(const std::uint8_t* labels, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    if (labels[i] > 1) {
      throw std::invalid_argument("nap::metrics: labels[" + std::to_string(i) + "] = " +
                                  std::to_string(labels[i]) + ": expected 0 (P) or 1 (R)");
    }
  }
}

}  // namespace

Metrics metrics(const float* w, const std::uint8_t* labels, std::size_t n, double eps) {
  check_eps(eps);
  check_labels(labels, n);
  std::vector<std::uint64_t> bins(kExactSumsSize);
  const RankSums ranks =
      rank_sums(w, labels, n, saturation_key_low(eps), saturation_key_high(eps), bins.data());
  const Exact r = population(bins.data() + exact_bin(0, 1) * 4),  // label 1's first bin
      p = population(bins.data() + exact_bin(0, 0) * 4);
  Metrics m;
  m.n = n;
  m.eps = eps;
  m.nonfinite = r.nonfinite + p.nonfinite;
  m.reinforced = stats(r);
  m.punished = stats(p);
  m.separation = m.nonfinite || !r.count || !p.count ? nan() : separation(r, p);
  m.inversion_ratio = m.nonfinite ? nan() : ratio(ranks);
  m.saturation = n ? to_double(false, Big(ranks.saturated), Big(n)) : nan();  // int / int
  const bool no_extremes = n == 0 || nan_key(ranks.min_key) || nan_key(ranks.max_key);
  m.min = no_extremes ? nan() : static_cast<double>(value_of(ranks.min_key));
  m.max = no_extremes ? nan() : static_cast<double>(value_of(ranks.max_key));
  return m;
}

Metrics sample_metrics(const float* w, const std::uint8_t* labels, std::size_t n,
                       const std::int64_t* sample, std::size_t m, double eps) {
  const std::int64_t bad = first_bad_id(sample, m, static_cast<std::int64_t>(n));
  if (bad >= 0) {
    throw std::out_of_range("nap::sample_metrics: sample[" + std::to_string(bad) + "] = " +
                            std::to_string(sample[bad]) + " is outside [0, " +
                            std::to_string(n) + ")");
  }
  std::vector<float> ws(m);
  std::vector<std::uint8_t> ls(m);
  for (std::size_t j = 0; j < m; ++j) {
    ws[j] = w[sample[j]];
    ls[j] = labels[sample[j]];
  }
  return metrics(ws.data(), ls.data(), m, eps);
}

double inversion_ratio(const float* r, std::size_t nr, const float* p, std::size_t np) {
  if (nr == 0 || np == 0) return nan();
  std::vector<float> w(r, r + nr);
  w.insert(w.end(), p, p + np);
  std::vector<std::uint8_t> labels(nr + np, 0);
  std::fill(labels.begin(), labels.begin() + static_cast<std::ptrdiff_t>(nr), std::uint8_t{1});
  const RankSums s = rank_sums(w.data(), labels.data(), nr + np, 0, 0);
  return nan_key(s.min_key) || nan_key(s.max_key) ? nan() : ratio(s);
}

}  // namespace nap
