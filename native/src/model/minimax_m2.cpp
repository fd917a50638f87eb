#include "model/minimax_m2.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cmath>
#include <cstdlib>
#include <set>
#include <stdexcept>
#include <string>

namespace studio::model {

namespace {

std::string item_name(size_t i, uint32_t seq) {
  return "batch item " + std::to_string(i) + " (seq " + std::to_string(seq) + ")";
}

// The throwaway sequence of the load-time warm-up step.
constexpr uint32_t kWarmupSeq = UINT32_MAX;

int64_t rows_of(const ForwardItem& item, int64_t hidden) {
  return item.has_hidden ? static_cast<int64_t>(item.hidden.size()) / hidden : static_cast<int64_t>(item.tokens.size());
}

}  // namespace

MinimaxM2Shard::MinimaxM2Shard(const std::string& model_dir, ModelConfig config, ShardRange range,
                               std::unique_ptr<Backend> backend, const ProgressFn& progress)
    : config_(std::move(config)), range_(range), backend_(std::move(backend)), checkpoint_(model_dir) {
  if (const char* ahead = std::getenv("STUDIO_DECODE_AHEAD")) {
    const std::string choice = ahead;
    if (choice != "on" && choice != "off")
      throw std::invalid_argument("STUDIO_DECODE_AHEAD must be on or off (got \"" + choice + "\")");
    decode_ahead_ = choice == "on";
  }
  weights_ = load_weights(checkpoint_, config_, range_, *backend_, progress);
  if (backend_->wants_warmup()) warm_up();
}

void MinimaxM2Shard::warm_up() {
  // One decode step of a throwaway sequence (no other exists yet): MLX builds its kernels (Metal pipelines,
  // compiled functions) on first use, which would otherwise land on the first request.
  const auto started = std::chrono::steady_clock::now();
  std::vector<ForwardItem> batch(1);
  batch[0].seq = kWarmupSeq;
  if (range_.embed) {
    batch[0].tokens = {0};
  } else {
    batch[0].hidden.assign(static_cast<size_t>(config_.hidden), 0.0f);
    batch[0].has_hidden = true;
  }
  forward(batch);
  if (range_.head && backend_->samples_on_device()) {
    // A second step that draws (top_p nucleus, top_logprobs): the device sampler's kernels beyond greedy's.
    batch[0].position = 1;
    batch[0].sampling.temperature = 1;
    batch[0].sampling.top_p = 0.9f;
    batch[0].sampling.top_logprobs = 2;
    forward(batch);
  }
  sequences_.release(kWarmupSeq);
  weight_bytes_read_ = 0;
  warmup_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
}

size_t MinimaxM2Shard::kv_bytes_per_token() const {
  return static_cast<size_t>(range_.end - range_.start) * 2 * config_.kv_width() * backend_->kv_element_bytes();
}

void MinimaxM2Shard::validate(const std::vector<ForwardItem>& batch) {
  if (batch.empty()) throw std::invalid_argument("forward: empty batch");
  std::set<uint32_t> seen;
  for (size_t i = 0; i < batch.size(); ++i) {
    const ForwardItem& item = batch[i];
    const std::string who = item_name(i, item.seq);
    if (!seen.insert(item.seq).second) throw std::invalid_argument(who + ": sequence appears twice in one batch");
    if (range_.embed && item.has_hidden) throw std::invalid_argument(who + ": this first stage takes tokens, not hidden");
    if (!range_.embed && !item.has_hidden) throw std::invalid_argument(who + ": this stage takes hidden, not tokens");
    if (item.has_hidden && item.hidden.size() % config_.hidden != 0)
      throw std::invalid_argument(who + ": hidden holds " + std::to_string(item.hidden.size()) +
                                  " floats, not a multiple of hidden_size " + std::to_string(config_.hidden));
    const int64_t n = rows_of(item, config_.hidden);
    if (n == 0) throw std::invalid_argument(who + ": no tokens");
    for (int32_t t : item.tokens)
      if (t < 0 || t >= config_.vocab)
        throw std::invalid_argument(who + ": token " + std::to_string(t) + " outside the vocabulary [0, " +
                                    std::to_string(config_.vocab) + ")");
    KvCache* cache = sequences_.find(item.seq);
    const int64_t length = cache ? cache->length() : 0;
    if (item.position != length)
      throw std::invalid_argument(who + ": position " + std::to_string(item.position) + " but the sequence holds " +
                                  std::to_string(length) + " positions");
    if (item.position + n > config_.max_positions)
      throw std::invalid_argument(who + ": positions up to " + std::to_string(item.position + n) +
                                  " exceed max_position_embeddings " + std::to_string(config_.max_positions));
  }
}

// One decoder layer, as the math reads:  h += attn(norm(h));  h += moe(norm(h)).
void MinimaxM2Shard::run_layer(int local, const LayerWeights& w, Activations& h, std::span<const int32_t> positions,
                               std::span<const AttentionSegment> segments) {
  Backend& b = *backend_;
  auto x = b.activations(h.rows, config_.hidden);      // norm(h), for each half in turn
  auto delta = b.activations(h.rows, config_.hidden);  // what each half adds to h

  b.rms_norm(h, *w.input_norm, config_.rms_eps, *x);
  attention(local, w, *x, positions, segments, *delta);
  b.add(h, *delta);

  b.rms_norm(h, *w.post_norm, config_.rms_eps, *x);
  const Routing routing = moe(w, *x, *delta);
  b.add(h, *delta);

  weight_bytes_read_ += bytes_read(w, routing, h.rows);
}

// Grouped-query attention with QK-norm and partial rotary embedding; appends this step's k, v to the cache.
void MinimaxM2Shard::attention(int local, const LayerWeights& w, const Activations& x,
                               std::span<const int32_t> positions, std::span<const AttentionSegment> segments,
                               Activations& out) {
  Backend& b = *backend_;
  const int64_t n = x.rows;
  auto q = b.activations(n, config_.q_width());
  auto k = b.activations(n, config_.kv_width());
  auto v = b.activations(n, config_.kv_width());
  auto heads = b.activations(n, config_.q_width());
  b.matmul(*w.q, x, *q);
  b.matmul(*w.k, x, *k);
  b.matmul(*w.v, x, *v);
  // QK-norm spans all heads at once, before the head split.
  b.rms_norm(*q, *w.q_norm, config_.rms_eps, *q);
  b.rms_norm(*k, *w.k_norm, config_.rms_eps, *k);
  b.rope(*q, {config_.heads, config_.head_dim, config_.rotary_dim, config_.rope_theta}, positions);
  b.rope(*k, {config_.kv_heads, config_.head_dim, config_.rotary_dim, config_.rope_theta}, positions);
  const AttentionShape shape{config_.heads, config_.kv_heads, config_.head_dim,
                             static_cast<float>(1.0 / std::sqrt(static_cast<double>(config_.head_dim)))};
  b.attention(*q, *k, *v, local, segments, shape, *heads);
  b.matmul(*w.o, *heads, out);
}

// The routed experts: a sigmoid router picks top_k per row, their SwiGLU outputs are mixed by the weights.
Routing MinimaxM2Shard::moe(const LayerWeights& w, const Activations& x, Activations& out) {
  Backend& b = *backend_;
  Routing routing = b.route(*w.router, *w.route_bias, x, config_.top_k);
  b.experts(*w.gate, *w.up, *w.down, x, routing, out);
  return routing;
}

// Weight bytes one layer read for n rows: every dense matrix, and each expert the rows were routed to once.
double MinimaxM2Shard::bytes_read(const LayerWeights& w, const Routing& routing, int64_t n) const {
  // A device-side routing (mlx) is not read back: count the most experts the rows can touch instead.
  const size_t used = routing.experts.empty()
                          ? std::min<size_t>(config_.experts, static_cast<size_t>(n) * config_.top_k)
                          : std::set<int32_t>(routing.experts.begin(), routing.experts.end()).size();
  return static_cast<double>(w.dense_bytes) + static_cast<double>(used * w.expert_bytes);
}

void MinimaxM2Shard::release(uint32_t seq) {
  drop_speculation(seq);
  sequences_.release(seq);
}

void MinimaxM2Shard::fork(uint32_t seq, uint32_t new_seq, int64_t prefix) {
  drop_speculation(new_seq);
  sequences_.fork(seq, new_seq, prefix);
}

std::vector<ForwardResult> MinimaxM2Shard::forward(std::vector<ForwardItem>& batch) {
  if (speculation_matches(batch)) return finish_speculation(batch);
  // Built for a step that did not come (another token, batch or sampling): dropped. Its KV write sits past the
  // sequence's committed length, where the next step writes again before anything reads it.
  if (speculation_) ++steps_ahead_dropped_;
  speculation_.reset();
  validate(batch);
  Backend& b = *backend_;
  const int64_t hidden = config_.hidden;
  const int layers = range_.end - range_.start;

  // New sequences get their caches now but join the store only when the forward succeeds.
  std::vector<std::unique_ptr<KvCache>> fresh(batch.size());
  std::vector<AttentionSegment> segments;
  std::vector<int32_t> positions;
  int64_t rows = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const ForwardItem& item = batch[i];
    const int64_t n = rows_of(item, hidden);
    KvCache* cache = sequences_.find(item.seq);
    if (!cache) {
      fresh[i] = b.kv_cache(layers, static_cast<int>(config_.kv_width()));
      cache = fresh[i].get();
    }
    cache->reserve(item.position + n);
    segments.push_back({cache, rows, n, item.position});
    for (int64_t t = 0; t < n; ++t) positions.push_back(static_cast<int32_t>(item.position + t));
    rows += n;
  }

  auto h = b.activations(rows, hidden);
  if (range_.embed) {
    std::vector<int32_t> ids;
    for (const ForwardItem& item : batch) ids.insert(ids.end(), item.tokens.begin(), item.tokens.end());
    b.embed(*weights_.embed, ids, *h);
    weight_bytes_read_ += static_cast<double>(ids.size() * weights_.embed_row_bytes);
  } else {
    std::vector<float> in;
    in.reserve(rows * hidden);
    for (const ForwardItem& item : batch) in.insert(in.end(), item.hidden.begin(), item.hidden.end());
    b.upload(in.data(), *h);
  }
  for (int l = 0; l < layers; ++l) run_layer(l, weights_.layers[l], *h, positions, segments);

  for (size_t i = 0; i < batch.size(); ++i) {
    segments[i].cache->commit(batch[i].position + segments[i].rows);
    if (fresh[i]) sequences_.insert(batch[i].seq, std::move(fresh[i]));
  }

  std::vector<ForwardResult> results(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) results[i].seq = batch[i].seq;
  if (!range_.head) {
    std::vector<float> all(rows * hidden);
    b.download(*h, all.data());
    for (size_t i = 0; i < batch.size(); ++i)
      results[i].hidden.assign(all.begin() + segments[i].row * hidden,
                               all.begin() + (segments[i].row + segments[i].rows) * hidden);
    return results;
  }
  // Last stage: only each item's last position reaches the head.
  std::vector<int64_t> last;
  for (const AttentionSegment& s : segments) last.push_back(s.row + s.rows - 1);
  auto logits = head_logits(*h, last);
  std::vector<size_t> on_device, on_host;
  for (size_t i = 0; i < batch.size(); ++i)
    (b.samples_on_device() && device_samplable(batch[i]) ? on_device : on_host).push_back(i);
  if (!on_device.empty()) sample_on_device(*logits, on_device, batch, segments, results);
  // Host rows after the device's picks were started: their download then waits for those too, once.
  if (!on_host.empty()) sample_on_host(*logits, on_host, batch, segments, results);
  return results;
}

// Logit bias and a constraint's mask are applied on the host, as is sampling when the caller wants the logits
// anyway: those rows take the host path (docs/architecture.md, "Sampling on the device").
bool MinimaxM2Shard::device_samplable(const ForwardItem& item) {
  const SamplingParams& p = item.sampling;
  return !item.return_logits && p.logit_bias.empty() && p.allow.empty() && p.ban.empty();
}

// Rows `which` of all the logits, or all of them as they are.
const Activations& MinimaxM2Shard::rows_of_logits(const Activations& logits, const std::vector<size_t>& which,
                                                  std::unique_ptr<Activations>& owner) {
  if (which.size() == static_cast<size_t>(logits.rows)) return logits;
  std::vector<int64_t> rows(which.begin(), which.end());
  owner = backend_->activations(static_cast<int64_t>(rows.size()), logits.cols);
  backend_->gather_rows(logits, rows, *owner);
  return *owner;
}

void MinimaxM2Shard::sample_on_device(const Activations& logits, const std::vector<size_t>& which,
                                      const std::vector<ForwardItem>& batch,
                                      const std::vector<AttentionSegment>& segments,
                                      std::vector<ForwardResult>& results) {
  std::vector<DeviceDraw> draws;
  for (const size_t i : which) {
    const SamplingParams& p = batch[i].sampling;
    const int64_t position = segments[i].position + segments[i].rows - 1;
    draws.push_back(device_draw(p, position));
  }
  std::unique_ptr<Activations> owner;
  const std::unique_ptr<PendingPicks> pending = backend_->sample_lazily(rows_of_logits(logits, which, owner), draws);
  // One sequence decoding alone: its next step is built now, fed by this pick still on the device, and runs
  // while this one's token goes back to the caller (can_speculate says when).
  std::unique_ptr<Speculation> next;
  if (batch.size() == 1) {
    const int64_t position = segments[0].position + segments[0].rows;
    if (can_speculate(batch[0], position))
      next = try_speculate(batch[0].seq, segments[0].cache, position, batch[0].sampling, *pending);
  }
  const std::vector<DevicePick> picks = pending->read();
  for (size_t j = 0; j < which.size(); ++j)
    results[which[j]].sample = Sample{picks[j].token, picks[j].logprob, picks[j].top};
  if (next) {
    next->token = picks[0].token;
    speculation_ = std::move(next);
  }
}

void MinimaxM2Shard::sample_on_host(const Activations& logits, const std::vector<size_t>& which,
                                    std::vector<ForwardItem>& batch, const std::vector<AttentionSegment>& segments,
                                    std::vector<ForwardResult>& results) {
  std::unique_ptr<Activations> owner;
  const Activations& rows = rows_of_logits(logits, which, owner);
  std::vector<float> all(which.size() * config_.vocab);
  backend_->download(rows, all.data());
  for (size_t j = 0; j < which.size(); ++j) {
    const size_t i = which[j];
    std::span<float> row(all.data() + j * config_.vocab, config_.vocab);
    if (batch[i].return_logits) results[i].logits.assign(row.begin(), row.end());
    results[i].sample = sample_token(row, batch[i].sampling, segments[i].position + segments[i].rows - 1);
  }
}

DeviceDraw MinimaxM2Shard::device_draw(const SamplingParams& p, int64_t position) {
  // The host's seeded draw, as sample_token makes it: the device only applies it.
  const double uniform = p.temperature > 0 ? counter_uniform(p.seed, static_cast<uint64_t>(position)) : 0.0;
  return {p.temperature, p.top_p, p.top_k, p.top_logprobs, uniform};
}

// The final norm and lm_head on rows `last` of h.
std::unique_ptr<Activations> MinimaxM2Shard::head_logits(const Activations& h, std::span<const int64_t> last) {
  Backend& b = *backend_;
  auto hl = b.activations(static_cast<int64_t>(last.size()), config_.hidden);
  b.gather_rows(h, last, *hl);
  b.rms_norm(*hl, *weights_.final_norm, config_.rms_eps, *hl);
  auto logits = b.activations(static_cast<int64_t>(last.size()), config_.vocab);
  b.matmul(*weights_.lm_head, *hl, *logits);
  weight_bytes_read_ += static_cast<double>(weights_.head_bytes);
  return logits;
}

// Building ahead needs the whole model here (the token feeds this shard's own embedding), a step that needs
// nothing from the host between tokens (device sampling without bias, mask or logits), and a decode step: after
// a prompt chunk the next call is usually the next chunk, and a step built ahead of it would be wasted.
bool MinimaxM2Shard::can_speculate(const ForwardItem& item, int64_t next_position) const {
  return decode_ahead_ && range_.embed && range_.head && backend_->samples_on_device() && device_samplable(item) &&
         item.tokens.size() == 1 && item.seq != kWarmupSeq && next_position < config_.max_positions;
}

// The decode step at `position` of `seq`, its input the token `input` picks on the device: layers, head and
// sampling queued on the device, nothing waited for. Committed only when the caller asks for this very step.
std::unique_ptr<MinimaxM2Shard::Speculation> MinimaxM2Shard::speculate(uint32_t seq, KvCache* cache, int64_t position,
                                                                      const SamplingParams& sampling,
                                                                      const PendingPicks& input) {
  Backend& b = *backend_;
  const double before = weight_bytes_read_;
  cache->reserve(position + 1);
  const AttentionSegment segment{cache, 0, 1, position};
  const int32_t at = static_cast<int32_t>(position);
  auto h = b.activations(1, config_.hidden);
  b.embed_picks(*weights_.embed, input, *h);
  weight_bytes_read_ += static_cast<double>(weights_.embed_row_bytes);
  for (int l = 0; l < range_.end - range_.start; ++l)
    run_layer(l, weights_.layers[l], *h, std::span(&at, 1), std::span(&segment, 1));
  const int64_t row = 0;
  auto logits = head_logits(*h, std::span(&row, 1));
  const DeviceDraw draw = device_draw(sampling, position);
  auto spec = std::make_unique<Speculation>();
  spec->seq = seq;
  spec->position = position;
  spec->sampling = sampling;
  spec->cache = cache;
  spec->picks = b.sample_lazily(*logits, std::span(&draw, 1));
  // Counted when the step is asked for.
  spec->bytes_read = weight_bytes_read_ - before;
  weight_bytes_read_ = before;
  return spec;
}

// Building ahead only saves time: if it fails, the step it follows still succeeds, and the next step, built as
// usual, reports the error.
std::unique_ptr<MinimaxM2Shard::Speculation> MinimaxM2Shard::try_speculate(uint32_t seq, KvCache* cache,
                                                                          int64_t position,
                                                                          const SamplingParams& sampling,
                                                                          const PendingPicks& input) {
  try {
    return speculate(seq, cache, position, sampling, input);
  } catch (const std::exception&) {
    return nullptr;
  }
}

// The very step built ahead: one item, the same sequence, position, input token and sampling.
bool MinimaxM2Shard::speculation_matches(const std::vector<ForwardItem>& batch) {
  if (!speculation_ || batch.size() != 1) return false;
  const Speculation& s = *speculation_;
  const ForwardItem& item = batch[0];
  const SamplingParams& a = item.sampling;
  const SamplingParams& b = s.sampling;
  return item.seq == s.seq && !item.has_hidden && item.tokens.size() == 1 && item.tokens[0] == s.token &&
         item.position == s.position && sequences_.find(item.seq) == s.cache && s.cache->length() == s.position &&
         device_samplable(item) && a.temperature == b.temperature && a.top_p == b.top_p && a.top_k == b.top_k &&
         a.seed == b.seed && a.top_logprobs == b.top_logprobs;
}

std::vector<ForwardResult> MinimaxM2Shard::finish_speculation(const std::vector<ForwardItem>& batch) {
  std::unique_ptr<Speculation> s = std::move(speculation_);
  ++steps_ahead_used_;
  const ForwardItem& item = batch[0];
  s->cache->commit(s->position + 1);
  weight_bytes_read_ += s->bytes_read;
  // The step after this one is queued before this one's token is read, as the first was.
  std::unique_ptr<Speculation> next;
  if (can_speculate(item, s->position + 1))
    next = try_speculate(item.seq, s->cache, s->position + 1, item.sampling, *s->picks);
  const std::vector<DevicePick> picks = s->picks->read();
  std::vector<ForwardResult> results(1);
  results[0].seq = item.seq;
  results[0].sample = Sample{picks[0].token, picks[0].logprob, picks[0].top};
  if (next) {
    next->token = picks[0].token;
    speculation_ = std::move(next);
  }
  return results;
}

void MinimaxM2Shard::drop_speculation(uint32_t seq) {
  if (speculation_ && speculation_->seq == seq) {
    ++steps_ahead_dropped_;
    speculation_.reset();
  }
}

}  // namespace studio::model
