#include "ringattn/simulator/engine.hpp"

#include <bit>
#include <cmath>

#include "ringattn/core/error.hpp"

namespace ringattn::sim {

void EventQueue::schedule(double time, std::uint32_t resource) {
  require(std::isfinite(time), "simulator: an event was scheduled at a non-finite time");
  require(time >= now_, "simulator: an event was scheduled at ", time, " s, before the current time ",
          now_, " s");
  // Sift up: the new event rises while it is earlier than its parent.
  require(resource <= kMaxResource, "simulator: resource index ", resource, " beyond ", kMaxResource);
  require(next_seq_ < (std::uint64_t{1} << 40), "simulator: more than 2^40 events");
  const double t = time + 0.0;  // -0.0 becomes +0.0, whose bits order correctly
  const Entry e = (static_cast<Entry>(std::bit_cast<std::uint64_t>(t)) << 64) | (next_seq_++ << 24) | resource;
  std::size_t i = heap_.size();
  heap_.push_back(e);
  while (i > 0) {
    const std::size_t parent = (i - 1) / 4;
    if (!(e < heap_[parent])) break;
    heap_[i] = heap_[parent];
    i = parent;
  }
  heap_[i] = e;
}

Event EventQueue::pop() {
  require(!heap_.empty(), "simulator: pop from an empty event queue");
  const Entry top = heap_.front();
  const Entry last = heap_.back();
  heap_.pop_back();
  const std::size_t n = heap_.size();
  if (n > 0) {
    // Sift down: the last event sinks from the root below its earliest child.
    std::size_t i = 0;
    while (true) {
      const std::size_t first = 4 * i + 1;
      if (first >= n) break;
      std::size_t best = first;
      const std::size_t end = first + 4 < n ? first + 4 : n;
      for (std::size_t c = first + 1; c < end; ++c) best = heap_[c] < heap_[best] ? c : best;
      if (!(heap_[best] < last)) break;
      heap_[i] = heap_[best];
      i = best;
    }
    heap_[i] = last;
  }
  const auto low = static_cast<std::uint64_t>(top);
  now_ = std::bit_cast<double>(static_cast<std::uint64_t>(top >> 64));
  ++processed_;
  return Event{now_, low >> 24, static_cast<std::uint32_t>(low & kMaxResource)};
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
