#include "ringattn/simulator/engine.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <utility>

#include "ringattn/core/error.hpp"

namespace ringattn::sim {

EventQueue::EventQueue(std::uint32_t resources) {
  require(resources <= kMaxResource + 1, "simulator: ", resources, " resources, beyond ", kMaxResource + 1);
  if (resources > 0) grow(resources);
}

void EventQueue::grow(std::uint32_t resources) {
  std::size_t leaves = 1;
  while (leaves < resources) leaves *= 2;
  std::vector<Entry> tree(2 * leaves, kEmpty);
  for (std::size_t r = 0; r < leaves_; ++r) tree[leaves + r] = tree_[leaves_ + r];
  // Every match from the bottom up: a node's children are final before the node.
  for (std::size_t i = leaves - 1; i >= 1; --i) tree[i] = std::min(tree[2 * i], tree[2 * i + 1]);
  tree_ = std::move(tree);
  leaves_ = leaves;
}

void EventQueue::replay(std::size_t node) {
  Entry winner = tree_[node];
  for (std::size_t i = node; i > 1; i /= 2) {
    const Entry rival = tree_[i ^ 1];
    winner = rival < winner ? rival : winner;
    // Keys are unique (each has its own seq), so a parent that keeps its winner keeps the
    // whole path above it.
    if (tree_[i / 2] == winner) return;
    tree_[i / 2] = winner;
  }
}

void EventQueue::replay_all(std::size_t node) {
  Entry winner = tree_[node];
  for (std::size_t i = node; i > 1; i /= 2) {
    const Entry rival = tree_[i ^ 1];
    winner = rival < winner ? rival : winner;
    tree_[i / 2] = winner;
  }
}

void EventQueue::fill_hole() {
  const std::size_t leaf = leaves_ + hole_;
  hole_ = kNoHole;
  tree_[leaf] = kEmpty;
  replay_all(leaf);  // the popped event won every match on its path: each one changes
}

void EventQueue::schedule(double time, std::uint32_t resource) {
  require(std::isfinite(time), "simulator: an event was scheduled at a non-finite time");
  require(time >= now_, "simulator: an event was scheduled at ", time, " s, before the current time ",
          now_, " s");
  require(resource <= kMaxResource, "simulator: resource index ", resource, " beyond ", kMaxResource);
  require(next_seq_ < (std::uint64_t{1} << 40), "simulator: more than 2^40 events");
  const bool refill = resource == hole_;
  if (!refill) {
    require(resource >= leaves_ || tree_[leaves_ + resource] == kEmpty, "simulator: resource ", resource,
            " was given an event while one is pending (a resource runs one task at a time)");
    if (hole_ != kNoHole) fill_hole();
    if (resource >= leaves_) grow(resource + 1);
  }
  hole_ = kNoHole;
  const double t = time + 0.0;  // -0.0 becomes +0.0, whose bits order correctly
  const std::size_t leaf = leaves_ + resource;
  tree_[leaf] = (static_cast<Entry>(std::bit_cast<std::uint64_t>(t)) << 64) | (next_seq_++ << 24) | resource;
  // Refilling the leaf of the last pop: its old event won every match on the path, so every
  // match is replayed, once for the pop and the new event together.
  if (refill) replay_all(leaf);
  else replay(leaf);
  ++pending_;
}

Event EventQueue::pop() {
  require(pending_ > 0, "simulator: pop from an empty event queue");
  if (hole_ != kNoHole) fill_hole();
  const Entry top = tree_[1];
  const auto low = static_cast<std::uint64_t>(top);
  hole_ = static_cast<std::uint32_t>(low & kMaxResource);  // its leaf is replayed by the next call
  --pending_;
  now_ = std::bit_cast<double>(static_cast<std::uint64_t>(top >> 64));
  ++processed_;
  return Event{now_, low >> 24, hole_};
}

SlotPool::SlotPool(int capacity) : capacity_(capacity) {
  require(capacity >= 1, "a buffer pool needs at least one slot, got ", capacity);
}

void SlotPool::acquire() {
  require(used_ < capacity_, "simulator: buffer pool of ", capacity_, " slots over-committed");
  ++used_;
  if (used_ > peak_) peak_ = used_;
}

void SlotPool::release() {
  require(used_ > 0, "simulator: released a buffer slot that was not taken");
  --used_;
}

}  // namespace ringattn::sim
