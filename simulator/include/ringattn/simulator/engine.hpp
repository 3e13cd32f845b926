/// @file engine.hpp
/// @brief The discrete-event core: an event queue ordered by (time, sequence number).
///
/// Events that share a time are delivered in the order they were scheduled, so a simulation is
/// deterministic, and time never goes backwards: scheduling an event before the current time is
/// an error, not a silent reordering. The queue holds only pending events, so its memory is
/// bounded by the number of resources that can be busy at once, not by the events simulated.
#pragma once

#include <cstdint>
#include <vector>

namespace ringattn::sim {

/// One pending event: at `time`, resource `resource` finishes its current task.
struct Event {
  double time = 0;          ///< seconds since the start of the simulation
  std::uint64_t seq = 0;    ///< scheduling order; breaks ties between equal times
  std::uint32_t resource = 0;  ///< index of the resource whose task completes
};

/// Min-queue of events by (time, seq): a 4-ary heap (shallower than a binary heap, so fewer
/// cache misses per pop with thousands of pending events).
class EventQueue {
 public:
  /// Largest resource index (24 bits) and number of events a queue can schedule (2^40).
  static constexpr std::uint32_t kMaxResource = (1u << 24) - 1;
  /// Schedules an event for @p resource at @p time; throws ringattn::Error if @p time is before
  /// now() or not finite, or @p resource exceeds kMaxResource.
  void schedule(double time, std::uint32_t resource);
  /// True when no event is pending.
  [[nodiscard]] bool empty() const { return heap_.empty(); }
  /// Removes and returns the earliest event and advances now() to its time.
  Event pop();
  /// Time of the last event popped (0 before the first).
  [[nodiscard]] double now() const { return now_; }
  /// Events popped so far.
  [[nodiscard]] std::uint64_t processed() const { return processed_; }
  /// Events pending.
  [[nodiscard]] std::size_t pending() const { return heap_.size(); }

 private:
  // A heap entry is one 128-bit integer: the bits of the (non-negative) time in the high half,
  // then the sequence number (40 bits) and the resource (24 bits). Non-negative doubles order
  // like their bit patterns, so one unsigned comparison orders by (time, seq), without
  // branches; four children share a cache line.
  __extension__ using Entry = unsigned __int128;
  std::vector<Entry> heap_;
  double now_ = 0;
  std::uint64_t next_seq_ = 0;
  std::uint64_t processed_ = 0;
};

/// A counted pool of buffer slots (e.g. the K/V receive buffers of a device).
class SlotPool {
 public:
  /// A pool of @p capacity slots (>= 1).
  explicit SlotPool(int capacity = 1);
  /// True when a slot is free.
  [[nodiscard]] bool available() const { return used_ < capacity_; }
  /// Takes a slot; throws ringattn::Error if none is free (a logic error of the caller).
  void acquire();
  /// Returns a slot; throws ringattn::Error if none is taken.
  void release();
  [[nodiscard]] int used() const { return used_; }          ///< slots taken now
  [[nodiscard]] int capacity() const { return capacity_; }  ///< slots in the pool
  [[nodiscard]] int peak() const { return peak_; }          ///< most slots ever taken at once

 private:
  int capacity_;
  int used_ = 0;
  int peak_ = 0;
};

}  // namespace ringattn::sim
