// sessa/analysis/profile.hpp: influence against the lag, its power-law exponent, and the curves it is compared with.
//
// A profile takes the influence of a few source positions j on every later position t (analysis/influence.hpp)
// and reads it against the lag l = t - j: at each lag of a log-spaced grid, the median and two percentiles of
// |influence| over the sources that reach that lag. Query positions are never averaged (that flattens the
// exponent); each source contributes its own curve. fit_power_law fits log median = c - beta log l by least
// squares over the grid points of a lag range (log-spaced, so every decade weighs the same) and reports beta.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "../core/tensor.hpp"
#include "../error.hpp"

namespace sessa::analysis {

/// Every lag from 1 to min(max_lag, per_decade), then per_decade log-spaced lags per decade up to max_lag
/// (distinct, increasing, max_lag included).
inline std::vector<index_t> lag_grid(index_t max_lag, index_t per_decade = 32) {
  std::vector<index_t> g;
  if (max_lag < 1) return g;
  per_decade = std::max<index_t>(1, per_decade);
  for (index_t l = 1; l <= std::min(max_lag, per_decade); ++l) g.push_back(l);
  for (index_t k = 0;; ++k) {
    const double v = std::pow(10.0, std::log10(static_cast<double>(per_decade)) + static_cast<double>(k) / static_cast<double>(per_decade));
    const index_t l = static_cast<index_t>(std::llround(v));
    if (l > max_lag) break;
    if (l > g.back()) g.push_back(l);
  }
  if (g.back() != max_lag) g.push_back(max_lag);
  return g;
}

/// Influence against the lag over several sources.
struct lag_profile {
  std::vector<index_t> lags;     // the grid
  std::vector<double> median;    // median |influence| over the sources reaching each lag
  std::vector<double> low, high; // the low_q and high_q quantiles
  std::vector<index_t> sources;  // sources at each lag (all of them: the grid stops at full_lag)
  double low_q = 0.1, high_q = 0.9;

  index_t full_lag = 0;           // the largest lag every source reaches
};

namespace detail {
/// Quantile q of sorted values, linear between order statistics.
inline double quantile_sorted(const std::vector<double>& v, double q) {
  if (v.empty()) return 0.0;
  const double pos = q * static_cast<double>(v.size() - 1);
  const std::size_t i = static_cast<std::size_t>(pos);
  const double f = pos - static_cast<double>(i);
  return i + 1 < v.size() ? v[i] * (1.0 - f) + v[i + 1] * f : v[i];
}
}  // namespace detail

/// influence (k, n): row c the influence of sources[c] on every position t (as end_to_end_influence returns, and
/// feedback_system::columns transposed). The grid runs to the largest lag every source reaches, so each point
/// has all the sources.
inline lag_profile profile_by_lag(const tensor<double>& influence, std::span<const index_t> sources,
                                  double low_q = 0.1, double high_q = 0.9, index_t per_decade = 32) {
  const shape_t& s = influence.shape();
  const index_t k = static_cast<index_t>(sources.size());
  if (s.size() != 2 || s[0] != k || k == 0)
    throw shape_error("profile_by_lag: influence must have shape (" + std::to_string(k) +
                      ", tokens), one row per source; got " + shape_string(s));
  if (!(0.0 <= low_q && low_q <= 0.5 && 0.5 <= high_q && high_q <= 1.0))
    throw value_error("profile_by_lag: quantiles must satisfy 0 <= low <= 0.5 <= high <= 1");
  const index_t n = s[1];
  index_t full = n;
  for (const index_t j : sources) {
    full = std::min(full, n - 1 - j);
    if (j < 0 || j >= n) throw value_error("profile_by_lag: source " + std::to_string(j) + " outside [0, " + std::to_string(n) + ")");
  }
  lag_profile p;
  p.low_q = low_q;
  p.high_q = high_q;
  if (full < 1)
    throw value_error("profile_by_lag: a source at the last token (" + std::to_string(n - 1) + ") leaves no lag to measure");
  p.full_lag = full;
  p.lags = lag_grid(full, per_decade);  // past `full` fewer sources remain: the band and median would thin out
  std::vector<double> v;
  for (const index_t l : p.lags) {
    v.clear();
    for (index_t c = 0; c < k; ++c) {
      const index_t t = sources[static_cast<std::size_t>(c)] + l;
      if (t < n) v.push_back(std::abs(influence[c * n + t]));
    }
    std::sort(v.begin(), v.end());
    p.median.push_back(detail::quantile_sorted(v, 0.5));
    p.low.push_back(detail::quantile_sorted(v, low_q));
    p.high.push_back(detail::quantile_sorted(v, high_q));
    p.sources.push_back(static_cast<index_t>(v.size()));
  }
  return p;
}

/// A power law c * l^(-exponent) fitted to a profile's median.
struct power_fit {
  double exponent = 0.0;   // beta: influence ~ l^(-beta)
  double log_scale = 0.0;  // c = exp(log_scale)
  double r2 = 0.0;         // coefficient of determination of the log-log fit
  index_t lag_min = 0, lag_max = 0;
  index_t points = 0;

  double at(double lag) const { return std::exp(log_scale - exponent * std::log(lag)); }
};

/// Least squares of log median against log lag over the grid lags in [lag_min, lag_max] with a positive median.
/// Throws value_error when fewer than 3 points qualify.
inline power_fit fit_power_law(const lag_profile& p, index_t lag_min, index_t lag_max) {
  if (lag_min < 1 || lag_max <= lag_min)
    throw value_error("fit_power_law: the fit range [" + std::to_string(lag_min) + ", " + std::to_string(lag_max) +
                      "] must satisfy 1 <= min < max");
  double sx = 0, sy = 0, sxx = 0, sxy = 0, syy = 0;
  index_t m = 0;
  for (std::size_t i = 0; i < p.lags.size(); ++i) {
    if (p.lags[i] < lag_min || p.lags[i] > lag_max || !(p.median[i] > 0.0) || !std::isfinite(p.median[i])) continue;
    const double x = std::log(static_cast<double>(p.lags[i])), y = std::log(p.median[i]);
    sx += x, sy += y, sxx += x * x, sxy += x * y, syy += y * y;
    ++m;
  }
  if (m < 3)
    throw value_error("fit_power_law: only " + std::to_string(m) + " lags with a positive influence in [" +
                      std::to_string(lag_min) + ", " + std::to_string(lag_max) + "]; need at least 3 (a longer sequence "
                      "or a wider range)");
  const double dm = static_cast<double>(m);
  const double vx = sxx - sx * sx / dm, vy = syy - sy * sy / dm, cxy = sxy - sx * sy / dm;
  power_fit f;
  const double slope = vx > 0 ? cxy / vx : 0.0;
  f.exponent = -slope;
  f.log_scale = (sy - slope * sx) / dm;
  // A constant median (a flat, exact fit) has no variance to explain: r2 = 1 there, not 0 / 0.
  const bool flat = vy <= 1e-12 * (std::abs(syy) + 1.0);
  f.r2 = flat ? 1.0 : vx > 0 ? (cxy * cxy) / (vx * vy) : 0.0;
  f.lag_min = lag_min;
  f.lag_max = lag_max;
  f.points = m;
  return f;
}

/// The default fit range of a profile: [full / 200, full / 2] with full the largest lag every source reaches
/// (two decades and more, clear of both ends), at least [1, 3].
inline std::pair<index_t, index_t> default_fit_range(const lag_profile& p) {
  const index_t full = p.full_lag;
  const index_t lo = std::max<index_t>(1, static_cast<index_t>(std::llround(static_cast<double>(full) / 200.0)));
  return {lo, std::max<index_t>(lo + 2, full / 2)};
}

/// The lag at which the median first falls to half its value at the grid's first lag, interpolated on log
/// scales; 0 when it never does.
inline double half_life(const lag_profile& p) {
  if (p.median.empty() || !(p.median[0] > 0.0)) return 0.0;
  const double target = 0.5 * p.median[0];
  for (std::size_t i = 1; i < p.median.size(); ++i)
    if (p.median[i] <= target) {
      const double y0 = std::log(p.median[i - 1]), y1 = std::log(std::max(p.median[i], 1e-300));
      const double x0 = std::log(static_cast<double>(p.lags[i - 1])), x1 = std::log(static_cast<double>(p.lags[i]));
      const double f = y1 != y0 ? (std::log(target) - y0) / (y1 - y0) : 0.0;
      return std::exp(x0 + f * (x1 - x0));
    }
  return 0.0;
}

/// The comparison curves on a profile's grid, both through the median at the first lag l0:
///   diffuse:      a single diffuse attention read, weight 1 / l (scaled to m(l0) at l0);
///   exponential:  a gated recurrence with the profile's half-life h: m(l0) 2^(-(l - l0) / h).
struct reference_curves {
  std::vector<double> diffuse, exponential;
  double half_life = 0.0;
};
inline reference_curves comparison_curves(const lag_profile& p) {
  reference_curves r;
  if (p.lags.empty()) return r;
  const double l0 = static_cast<double>(p.lags[0]), m0 = p.median[0];
  r.half_life = half_life(p);
  for (const index_t l : p.lags) {
    const double x = static_cast<double>(l);
    r.diffuse.push_back(m0 * l0 / x);
    r.exponential.push_back(r.half_life > 0 ? m0 * std::exp2(-(x - l0) / r.half_life) : 0.0);
  }
  return r;
}

}  // namespace sessa::analysis
