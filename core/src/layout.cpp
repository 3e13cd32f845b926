#include "ringattn/core/layout.hpp"

#include <algorithm>

#include "ringattn/core/error.hpp"

namespace ringattn {
namespace {

// Chunk k of m over a sequence of s tokens: [floor(k*s/m), floor((k+1)*s/m)).
// Balanced: lengths differ by at most one, and equal m | s gives the usual s/m chunks.
std::int64_t chunk_begin(std::int64_t k, std::int64_t m, std::int64_t s) { return k * s / m; }

}  // namespace

std::string_view to_string(Layout layout) {
  switch (layout) {
    case Layout::Contiguous: return "contiguous";
    case Layout::Striped: return "striped";
    case Layout::Zigzag: return "zigzag";
  }
  return "unknown";
}

Layout parse_layout(std::string_view name) {
  for (Layout l : all_layouts()) {
    if (name == to_string(l)) return l;
  }
  fail("unknown layout '", name, "': expected contiguous, striped or zigzag");
}

const std::vector<Layout>& all_layouts() {
  static const std::vector<Layout> layouts = {Layout::Contiguous, Layout::Striped, Layout::Zigzag};
  return layouts;
}

SequenceLayout::SequenceLayout(Layout kind, std::int64_t seq_len, int ranks)
    : kind_(kind), seq_len_(seq_len), ranks_(ranks) {
  require(ranks >= 1, "the ring needs at least 1 rank, got ", ranks);
  require(seq_len >= 1, "the sequence length must be at least 1, got ", seq_len);
  const std::int64_t n = ranks;
  const std::int64_t chunks = kind == Layout::Zigzag ? 2 * n : n;
  require(seq_len >= chunks, to_string(kind), " layout over ", ranks, " ranks needs at least ", chunks,
          " tokens", kind == Layout::Zigzag ? " (2N chunks)" : "", " so every rank holds one; got ",
          seq_len);
  segments_.resize(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) {
    auto& segs = segments_[static_cast<std::size_t>(r)];
    switch (kind) {
      case Layout::Contiguous: {
        const std::int64_t b = chunk_begin(r, n, seq_len), e = chunk_begin(r + 1, n, seq_len);
        segs.push_back({b, 1, e - b, 0});
        break;
      }
      case Layout::Striped:
        segs.push_back({r, n, (seq_len - r + n - 1) / n, 0});
        break;
      case Layout::Zigzag:
        break;  // below: the chunk boundaries depend on every rank's length
    }
  }
  if (kind == Layout::Zigzag) {
    // Rank r holds L_r = (balanced share of S) tokens: a front chunk of floor(L_r/2) and a back
    // chunk of the rest. Front chunks are laid out in rank order from position 0, back chunks in
    // reverse rank order after them, so rank r holds chunks r and 2N-1-r of 2N. With 2N | S this
    // is the usual split into 2N equal chunks; otherwise shard lengths still differ by at most 1.
    std::vector<std::int64_t> front(static_cast<std::size_t>(n)), back(static_cast<std::size_t>(n));
    for (int r = 0; r < ranks; ++r) {
      const std::int64_t len = chunk_begin(r + 1, n, seq_len) - chunk_begin(r, n, seq_len);
      front[static_cast<std::size_t>(r)] = len / 2;
      back[static_cast<std::size_t>(r)] = len - len / 2;
    }
    std::int64_t pos = 0;
    for (int r = 0; r < ranks; ++r) {
      const std::int64_t f = front[static_cast<std::size_t>(r)];
      segments_[static_cast<std::size_t>(r)].push_back({pos, 1, f, 0});
      pos += f;
    }
    for (int r = ranks - 1; r >= 0; --r) {
      const std::int64_t f = front[static_cast<std::size_t>(r)], b = back[static_cast<std::size_t>(r)];
      segments_[static_cast<std::size_t>(r)].push_back({pos, 1, b, f});
      pos += b;
    }
  }
  if (kind != Layout::Striped) {
    // Every stride-1 run, sorted by start, for locate().
    for (int r = 0; r < ranks; ++r) {
      for (const Segment& seg : segments_[static_cast<std::size_t>(r)]) runs_.push_back({seg.start, r, seg.local_begin});
    }
    std::sort(runs_.begin(), runs_.end(), [](const Run& a, const Run& b) { return a.start < b.start; });
  }
}

void SequenceLayout::check_rank(int rank) const {
  require(rank >= 0 && rank < ranks_, "rank ", rank, " is out of range for a ring of ", ranks_);
}

bool SequenceLayout::even() const { return seq_len_ % ranks_ == 0; }

std::int64_t SequenceLayout::shard_length(int rank) const {
  std::int64_t n = 0;
  for (const Segment& s : segments(rank)) n += s.length;
  return n;
}

std::int64_t SequenceLayout::max_shard_length() const {
  std::int64_t m = 0;
  for (int r = 0; r < ranks_; ++r) m = std::max(m, shard_length(r));
  return m;
}

const std::vector<Segment>& SequenceLayout::segments(int rank) const {
  check_rank(rank);
  return segments_[static_cast<std::size_t>(rank)];
}

std::int64_t SequenceLayout::position(int rank, std::int64_t index) const {
  for (const Segment& s : segments(rank)) {
    if (index >= s.local_begin && index < s.local_begin + s.length) {
      return s.position(index - s.local_begin);
    }
  }
  fail("local index ", index, " is out of range for rank ", rank, ", which holds ",
       shard_length(rank), " tokens");
}

LocalIndex SequenceLayout::locate(std::int64_t p) const {
  require(p >= 0 && p < seq_len_, "position ", p, " is outside the sequence of ", seq_len_, " tokens");
  if (kind_ == Layout::Striped) return {static_cast<int>(p % ranks_), p / ranks_};
  // The last run that starts at or before p holds it (runs tile the sequence).
  const auto it = std::upper_bound(runs_.begin(), runs_.end(), p,
                                   [](std::int64_t x, const Run& run) { return x < run.start; });
  const Run& run = *(it - 1);
  return {run.rank, run.local_begin + (p - run.start)};
}

std::vector<std::int64_t> SequenceLayout::positions(int rank) const {
  std::vector<std::int64_t> out;
  out.reserve(static_cast<std::size_t>(shard_length(rank)));
  for (const Segment& s : segments(rank)) {
    for (std::int64_t i = 0; i < s.length; ++i) out.push_back(s.position(i));
  }
  return out;
}

}  // namespace ringattn
