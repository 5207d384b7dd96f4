// sessa/analysis/svg.hpp: a self-contained log-log plot as SVG text (no tools needed to read it).
//
// Lines (solid or dashed) and shaded bands on decade-aligned log axes, with major ticks and labels at every
// power of ten, minor ticks at 2..9, axis titles, a title, a legend and free notes under the legend.
// Values that are not positive, or below the y range (which spans at most `max_decades` under the largest
// value), break a line instead of being drawn.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace sessa::analysis {

struct plot_line {
  std::string label;
  std::vector<double> x, y;
  std::string color = "#1f77b4";
  bool dashed = false;
  double width = 2.0;
};

struct plot_band {
  std::string label;
  std::vector<double> x, low, high;
  std::string color = "#1f77b4";
  double opacity = 0.2;
};

struct loglog_plot {
  std::string title, x_label, y_label;
  std::vector<plot_band> bands;
  std::vector<plot_line> lines;
  std::vector<std::string> notes;  // lines of text under the legend
  int width = 720, height = 480;
  double max_decades = 8.0;  // the y range spans at most this many decades below the largest value
};

namespace detail {

inline std::string svg_escape(const std::string& s) {
  std::string o;
  for (const char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

inline std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

}  // namespace detail

/// The plot as an SVG document.
inline std::string to_svg(const loglog_plot& p) {
  using detail::num;
  using detail::svg_escape;
  double xmin = HUGE_VAL, xmax = 0, ymax = 0, ymin_data = HUGE_VAL;
  auto see = [&](double x, double y) {
    if (!(x > 0) || !std::isfinite(x) || !(y > 0) || !std::isfinite(y)) return;
    xmin = std::min(xmin, x), xmax = std::max(xmax, x);
    ymax = std::max(ymax, y), ymin_data = std::min(ymin_data, y);
  };
  for (const auto& l : p.lines)
    for (std::size_t i = 0; i < std::min(l.x.size(), l.y.size()); ++i) see(l.x[i], l.y[i]);
  for (const auto& b : p.bands)
    for (std::size_t i = 0; i < std::min({b.x.size(), b.low.size(), b.high.size()}); ++i) {
      see(b.x[i], b.low[i]);
      see(b.x[i], b.high[i]);
    }
  if (!(xmax > 0)) xmin = 1, xmax = 10, ymax = 1, ymin_data = 0.1;
  const double lx0 = std::floor(std::log10(xmin)), lx1 = std::max(lx0 + 1, std::ceil(std::log10(xmax)));
  const double ly1 = std::ceil(std::log10(ymax) + 0.1);  // headroom: a curve never runs along the top edge
  const double ly0 = std::min(ly1 - 1, std::max(std::floor(std::log10(ymin_data)), ly1 - p.max_decades));
  const double W = p.width, H = p.height, left = 78, right = 20, top = 40, bottom = 56;
  const double pw = W - left - right, ph = H - top - bottom;
  auto X = [&](double x) { return left + (std::log10(x) - lx0) / (lx1 - lx0) * pw; };
  auto Y = [&](double y) { return top + (ly1 - std::log10(y)) / (ly1 - ly0) * ph; };
  const double ylow = std::pow(10.0, ly0);
  auto inside = [&](double x, double y) {
    return x > 0 && std::isfinite(x) && y >= ylow * (1 - 1e-12) && std::isfinite(y) && y > 0;
  };

  std::string s;
  s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(W) + "\" height=\"" + num(H) + "\" viewBox=\"0 0 " +
       num(W) + " " + num(H) + "\" font-family=\"DejaVu Sans, Arial, sans-serif\" font-size=\"12\">\n";
  s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s += "<text x=\"" + num(W / 2) + "\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">" + svg_escape(p.title) + "</text>\n";
  s += "<clipPath id=\"plot\"><rect x=\"" + num(left) + "\" y=\"" + num(top) + "\" width=\"" + num(pw) + "\" height=\"" +
       num(ph) + "\"/></clipPath>\n";
  // Grid and ticks.
  for (double e = lx0; e <= lx1 + 1e-9; e += 1) {
    const double x = X(std::pow(10.0, e));
    s += "<line x1=\"" + num(x) + "\" y1=\"" + num(top) + "\" x2=\"" + num(x) + "\" y2=\"" + num(top + ph) +
         "\" stroke=\"#ddd\"/>\n";
    s += "<text x=\"" + num(x) + "\" y=\"" + num(top + ph + 18) + "\" text-anchor=\"middle\">10<tspan dy=\"-6\" font-size=\"9\">" +
         std::to_string(static_cast<int>(e)) + "</tspan></text>\n";
    if (e < lx1)
      for (int m = 2; m <= 9; ++m) {
        const double xm = X(m * std::pow(10.0, e));
        s += "<line x1=\"" + num(xm) + "\" y1=\"" + num(top + ph) + "\" x2=\"" + num(xm) + "\" y2=\"" + num(top + ph - 4) +
             "\" stroke=\"#444\"/>\n";
      }
  }
  const int ystep = (ly1 - ly0) > 10 ? 2 : 1;
  for (double e = ly0; e <= ly1 + 1e-9; e += ystep) {
    const double y = Y(std::pow(10.0, e));
    s += "<line x1=\"" + num(left) + "\" y1=\"" + num(y) + "\" x2=\"" + num(left + pw) + "\" y2=\"" + num(y) +
         "\" stroke=\"#ddd\"/>\n";
    s += "<text x=\"" + num(left - 6) + "\" y=\"" + num(y + 4) + "\" text-anchor=\"end\">10<tspan dy=\"-6\" font-size=\"9\">" +
         std::to_string(static_cast<int>(e)) + "</tspan></text>\n";
  }
  s += "<rect x=\"" + num(left) + "\" y=\"" + num(top) + "\" width=\"" + num(pw) + "\" height=\"" + num(ph) +
       "\" fill=\"none\" stroke=\"#444\"/>\n";
  s += "<text x=\"" + num(left + pw / 2) + "\" y=\"" + num(H - 14) + "\" text-anchor=\"middle\">" + svg_escape(p.x_label) +
       "</text>\n";
  s += "<text transform=\"translate(18 " + num(top + ph / 2) + ") rotate(-90)\" text-anchor=\"middle\">" +
       svg_escape(p.y_label) + "</text>\n";
  // Bands: one polygon per run of drawable points.
  for (const auto& b : p.bands) {
    const std::size_t n = std::min({b.x.size(), b.low.size(), b.high.size()});
    std::size_t i = 0;
    while (i < n) {
      while (i < n && !(inside(b.x[i], b.high[i]))) ++i;
      std::size_t j = i;
      while (j < n && inside(b.x[j], b.high[j])) ++j;
      if (j > i + 1) {
        std::string pts;
        for (std::size_t k = i; k < j; ++k) pts += num(X(b.x[k])) + "," + num(Y(b.high[k])) + " ";
        for (std::size_t k = j; k-- > i;) pts += num(X(b.x[k])) + "," + num(Y(std::max(b.low[k], ylow))) + " ";
        s += "<polygon clip-path=\"url(#plot)\" points=\"" + pts + "\" fill=\"" + b.color + "\" fill-opacity=\"" +
             num(b.opacity) + "\" stroke=\"none\"/>\n";
      }
      i = j;
    }
  }
  // Lines: one polyline per run of drawable points.
  for (const auto& l : p.lines) {
    const std::size_t n = std::min(l.x.size(), l.y.size());
    std::size_t i = 0;
    while (i < n) {
      while (i < n && !inside(l.x[i], l.y[i])) ++i;
      std::size_t j = i;
      while (j < n && inside(l.x[j], l.y[j])) ++j;
      if (j > i) {
        std::string pts;
        for (std::size_t k = i; k < j; ++k) pts += num(X(l.x[k])) + "," + num(Y(l.y[k])) + " ";
        s += "<polyline clip-path=\"url(#plot)\" points=\"" + pts + "\" fill=\"none\" stroke=\"" + l.color +
             "\" stroke-width=\"" + num(l.width) + "\"" + (l.dashed ? " stroke-dasharray=\"6 4\"" : "") + "/>\n";
      }
      i = j;
    }
  }
  // Legend, bottom left of the plot area (power-law tails fall to the right).
  double ly = top + ph - 14 - 18.0 * static_cast<double>(p.lines.size() + p.bands.size() + p.notes.size());
  const double lx = left + 12;
  s += "<rect x=\"" + num(lx - 6) + "\" y=\"" + num(ly - 14) + "\" width=\"330\" height=\"" +
       num(18.0 * static_cast<double>(p.lines.size() + p.bands.size() + p.notes.size()) + 10) +
       "\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#bbb\"/>\n";
  for (const auto& b : p.bands) {
    s += "<rect x=\"" + num(lx) + "\" y=\"" + num(ly - 9) + "\" width=\"28\" height=\"10\" fill=\"" + b.color +
         "\" fill-opacity=\"" + num(b.opacity) + "\"/>\n";
    s += "<text x=\"" + num(lx + 36) + "\" y=\"" + num(ly) + "\">" + svg_escape(b.label) + "</text>\n";
    ly += 18;
  }
  for (const auto& l : p.lines) {
    s += "<line x1=\"" + num(lx) + "\" y1=\"" + num(ly - 4) + "\" x2=\"" + num(lx + 28) + "\" y2=\"" + num(ly - 4) +
         "\" stroke=\"" + l.color + "\" stroke-width=\"" + num(l.width) + "\"" +
         (l.dashed ? " stroke-dasharray=\"6 4\"" : "") + "/>\n";
    s += "<text x=\"" + num(lx + 36) + "\" y=\"" + num(ly) + "\">" + svg_escape(l.label) + "</text>\n";
    ly += 18;
  }
  for (const auto& note : p.notes) {
    s += "<text x=\"" + num(lx) + "\" y=\"" + num(ly) + "\" fill=\"#333\">" + svg_escape(note) + "</text>\n";
    ly += 18;
  }
  s += "</svg>\n";
  return s;
}

}  // namespace sessa::analysis
