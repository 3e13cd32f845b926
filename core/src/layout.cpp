#include "ringattn/core/layout.hpp"

#include <algorithm>

#include "ringattn/core/error.hpp"

namespace ringattn {
namespace {

// Chunk k of m over a sequence of s tokens: [floor(k*s/m), floor((k+1)*s/m)).
// Balanced: lengths differ by at most one, and equal m | s gives the usual s/m chunks.
std::int64_t chunk_begin(std::int64_t k, std::int64_t m, std::int64_t s) { return k * s / m; }

// The chunk holding position p: the largest k with chunk_begin(k) <= p.
std::int64_t chunk_of(std::int64_t p, std::int64_t m, std::int64_t s) {
  std::int64_t k = std::min(m - 1, p * m / s);
  while (k > 0 && chunk_begin(k, m, s) > p) --k;
  while (k + 1 < m && chunk_begin(k + 1, m, s) <= p) ++k;
  return k;
}

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
      case Layout::Zigzag: {
        const std::int64_t lo = r, hi = 2 * n - 1 - r;
        const std::int64_t b0 = chunk_begin(lo, chunks, seq_len), e0 = chunk_begin(lo + 1, chunks, seq_len);
        const std::int64_t b1 = chunk_begin(hi, chunks, seq_len), e1 = chunk_begin(hi + 1, chunks, seq_len);
        segs.push_back({b0, 1, e0 - b0, 0});
        segs.push_back({b1, 1, e1 - b1, e0 - b0});
        break;
      }
    }
  }
}

void SequenceLayout::check_rank(int rank) const {
  require(rank >= 0 && rank < ranks_, "rank ", rank, " is out of range for a ring of ", ranks_);
}

bool SequenceLayout::even() const {
  const std::int64_t chunks = kind_ == Layout::Zigzag ? 2 * ranks_ : ranks_;
  return seq_len_ % chunks == 0;
}

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
  const std::int64_t n = ranks_;
  switch (kind_) {
    case Layout::Contiguous: {
      const std::int64_t k = chunk_of(p, n, seq_len_);
      return {static_cast<int>(k), p - chunk_begin(k, n, seq_len_)};
    }
    case Layout::Striped:
      return {static_cast<int>(p % n), p / n};
    case Layout::Zigzag: {
      const std::int64_t k = chunk_of(p, 2 * n, seq_len_);
      const std::int64_t offset = p - chunk_begin(k, 2 * n, seq_len_);
      if (k < n) return {static_cast<int>(k), offset};
      const int r = static_cast<int>(2 * n - 1 - k);
      return {r, segments(r)[1].local_begin + offset};
    }
  }
  fail("unknown layout");
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
