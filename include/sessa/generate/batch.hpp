// sessa/generate/batch.hpp: several sessions generating together, prompts of different lengths at once.
//
//   std::vector<sessa::session<Model>> rows;                     // one per prompt, each fed its own prompt
//   std::vector<sessa::session<Model>*> ptrs = ...;              // the sessions to run together
//   auto results = sessa::generate_batch<Model>(ptrs, {.max_tokens = 100}, &tok,
//       [](sessa::index_t row, const sessa::token_event& e) { ...; return true; });
//
// Each session keeps its own cache (its own length), sampler, stop conditions and position; a step feeds the
// pending token of every row still running through one ragged decoder step (decoder::step_rows), so the weights
// are read once per step for all rows, while attention and feedback read each row's own cache. A row that stops
// (max tokens, stop token or string, full cache, or its callback returning false) leaves the batch at once and the
// others go on undisturbed. Each row takes exactly the steps session::generate takes alone (the same state
// machine, detail::generation_run), so its tokens equal a solo run's wherever the logits, equal within rounding,
// do not make a near-tie fall the other way; greedy text is the same in the tests.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/tensor.hpp"
#include "../error.hpp"
#include "../model/decoder.hpp"
#include "session.hpp"
#include "stop.hpp"
#include "tokenizer.hpp"

namespace sessa {

/// A streamed step of one row of a batch: the row's index in the batch and its event. Return false to stop
/// that row (stop_reason::cancelled); the other rows go on.
using row_token_callback = std::function<bool(index_t row, const token_event&)>;

namespace detail {
/// The execution settings of a context (thread count, stream), without its scratch.
template <class Ctx>
void copy_context_settings(Ctx& to, const Ctx& from) {
  if constexpr (requires { to.threads = from.threads; }) to.threads = from.threads;
  if constexpr (requires { to.stream = from.stream; }) to.stream = from.stream;
}
}  // namespace detail

/// Runs generate() on every session of `rows` together, each with its own stop criteria (`stops` has one
/// entry per row, or a single entry for all). Sessions must all run on one model object and be distinct; each
/// needs a prompt fed. Returns one result per row, in order (`seconds`: until that row stopped). The batch's
/// kernels run with the first session's context settings (threads, stream). Every argument is checked before
/// any session changes; an exception from a step or a callback leaves every session consistent (a token that
/// could not enter its cache stays pending).
template <class Model>
std::vector<generation_result> generate_batch(std::span<session<Model>* const> rows,
                                              std::span<const stop_criteria> stops, const tokenizer* tok = nullptr,
                                              const row_token_callback& on_token = {}) {
  using scalar_type = typename Model::scalar_type;
  using cache_type = typename Model::cache_type;
  const std::size_t n = rows.size();
  if (n == 0) throw value_error("generate_batch: no sessions");
  if (stops.size() != 1 && stops.size() != n)
    throw value_error("generate_batch: " + std::to_string(stops.size()) + " stop criteria for " + std::to_string(n) +
                      " sessions (give one for all, or one per session)");
  for (std::size_t i = 0; i < n; ++i) {
    if (!rows[i]) throw value_error("generate_batch: session " + std::to_string(i) + " is null");
    if (&rows[i]->model() != &rows[0]->model())
      throw value_error("generate_batch: session " + std::to_string(i) +
                        " runs on another model object than session 0 (a batch steps one model)");
    for (std::size_t j = 0; j < i; ++j)
      if (rows[j] == rows[i])
        throw value_error("generate_batch: sessions " + std::to_string(j) + " and " + std::to_string(i) +
                          " are the same session");
  }
  std::vector<detail::generation_run<Model>> runs;
  runs.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    token_callback cb;
    if (on_token) cb = [&on_token, i](const token_event& e) { return on_token(static_cast<index_t>(i), e); };
    runs.emplace_back(*rows[i], stops.size() == 1 ? stops[0] : stops[i], tok, std::move(cb));
  }
  const Model& model = rows[0]->model();
  const index_t V = model.config().vocab_size;
  step_scratch<typename Model::precision_type, typename Model::backend_type> scratch;
  detail::copy_context_settings(scratch.ws.context, rows[0]->cache().scratch.context);

  std::vector<generation_result> results(n);
  std::vector<std::size_t> active(n), running, stepping;
  for (std::size_t i = 0; i < n; ++i) active[i] = i;
  std::vector<std::int64_t> ids;
  std::vector<cache_type*> caches;
  while (!active.empty()) {
    running.clear();
    stepping.clear();
    ids.clear();
    caches.clear();
    for (std::size_t r : active) {
      std::optional<std::int64_t> feed;
      if (!runs[r].begin(feed)) {
        results[r] = runs[r].finish();
        continue;
      }
      running.push_back(r);
      if (feed) {
        stepping.push_back(r);
        ids.push_back(*feed);
        caches.push_back(&rows[r]->cache());
      }
    }
    if (!stepping.empty()) {
      const tensor<scalar_type> logits = to_host(model.step_rows(
          std::span<const std::int64_t>(ids), std::span<cache_type* const>(caches), scratch));  // (rows, V)
      for (std::size_t k = 0; k < stepping.size(); ++k)
        runs[stepping[k]].stepped(
            std::span<const scalar_type>(logits.data() + static_cast<index_t>(k) * V, static_cast<std::size_t>(V)));
    }
    active.clear();
    for (std::size_t r : running) {
      if (runs[r].sample()) active.push_back(r);
      else results[r] = runs[r].finish();
    }
  }
  return results;
}

/// The same stop criteria for every row.
template <class Model>
std::vector<generation_result> generate_batch(std::span<session<Model>* const> rows, const stop_criteria& stop,
                                              const tokenizer* tok = nullptr, const row_token_callback& on_token = {}) {
  return generate_batch<Model>(rows, std::span<const stop_criteria>(&stop, 1), tok, on_token);
}

}  // namespace sessa
